"""The llama.cpp engine profile: its arithmetic checked against ggml's block formats as gguf-py
(ggml's own Python package) lays them out, and its attachment to a model checked to leave nothing
behind."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from kvfp.compressors import parse_scheme
from kvfp.errors import UnknownNameError
from kvfp.runner import engines, generate, replay
from kvfp.runner.engines.llamacpp import LlamaCppProfile, ggml_rope_tables, quantize_q8_activations


def _q4_1_linear(rng, out_f=8, in_f=96):
    """A Linear whose weights are gguf-py's Q4_1 quantization of random weights, with the raw
    blocks' fields (d, m, codes) parsed from ggml's byte layout."""
    w = rng.standard_normal((out_f, in_f)).astype(np.float32) * 0.1 + 0.02
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)  # (out, nb*20) bytes
    deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(out_f, in_f)
    blocks = raw.reshape(out_f, in_f // 32, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    qs = blocks[..., 4:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int64)  # element j, then j + 16
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = torch.tensor(deq)
    return lin, d, m, codes


def test_q4_1_matmul_follows_ggml_block_dot_product():
    """y = Σ_b d_w·d_x·Σ q_w·q_x + m_w·s_x, with the activation blocks as ggml's x86 q8_1 quantizer
    makes them (fp16 d, s = fp16(d·Σq)) and the weight blocks as gguf-py stores them."""
    rng = np.random.default_rng(0)
    lin, d, m, codes = _q4_1_linear(rng)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    # the activation side, written out from the q8_1 format's definition
    xb = x.reshape(3, -1, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    qx = np.round(xb * (np.float32(127) / amax))  # numpy rounds ties to even, as _MM_ROUND_NEAREST
    dx = (amax / np.float32(127)).astype(np.float32)
    sx = (dx[..., 0] * qx.sum(-1)).astype(np.float16).astype(np.float64)
    dx16 = dx.astype(np.float16).astype(np.float64)[..., 0]
    want = (np.einsum("obj,tbj->tob", codes, qx) * d[None] * dx16[:, None, :] + m[None] * sx[:, None, :]).sum(-1)

    plain = lin(torch.tensor(x)).detach().double().numpy()
    profile = LlamaCppProfile(weight_types={"lin": "Q4_1"}, parts=("matmul",))
    model = torch.nn.Module()
    model.lin = lin
    handles = profile.install(model)
    try:
        got = lin(torch.tensor(x)).detach().double().numpy()
    finally:
        profile.uninstall(model, handles)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    assert np.abs(plain - want).max() > 100 * np.abs(got - want).max()  # the emulation is what matched
    np.testing.assert_array_equal(lin(torch.tensor(x)).detach().double().numpy(), plain)  # hooks removed


def test_activation_blocks_match_gguf_q8_0_but_for_ties_and_the_reciprocal():
    """ggml's x86 quantizer multiplies by 127/amax and rounds ties to even; the reference (what
    gguf-py implements) multiplies by 1/d and rounds ties away. The scales agree exactly, and the
    codes on all but the rare values that sit on a last-bit boundary."""
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(x.shape)
    ours, _ = quantize_q8_activations(torch.tensor(x))
    same = np.isclose(ours.numpy(), ref, rtol=0, atol=0)
    assert same.mean() > 0.999
    assert not np.array_equal(ours.numpy(), x)


def test_rope_angles_are_built_by_repeated_multiplication():
    pos = torch.tensor([[0, 1, 700, 4000]])
    cos, sin = ggml_rope_tables(pos, 64, 100000.0)
    scale = np.float32(np.power(np.float32(100000.0), np.float32(-2 / 64), dtype=np.float32))
    theta = np.float32(4000.0)
    for _ in range(5):
        theta = np.float32(theta * scale)
    assert cos[0, 3, 5].item() == pytest.approx(float(np.cos(theta)), abs=1e-6)
    exact = 4000.0 * 100000.0 ** (-2 * 5 / 64)
    assert cos[0, 3, 5].item() == pytest.approx(np.cos(exact), abs=1e-3)
    torch.testing.assert_close(cos[..., :32], cos[..., 32:])  # transformers' rotate-half layout
    assert torch.all(cos[0, 0] == 1) and torch.all(sin[0, 0] == 0)


def test_profile_moves_logits_and_removing_it_restores_the_model_bit_for_bit(tiny):
    model, tok = tiny
    ids = tok("def f(x):\n    return x * 2\n" * 6)["input_ids"][:60]
    before = generate(model, parse_scheme("none"), [ids], 4, logits=True)[0]
    types = {n: "Q4_1" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    engines.install(model, LlamaCppProfile(weight_types=types))
    try:
        emulated = replay(model, parse_scheme("none"), [ids], [before.output_ids], logits=True)[0]
    finally:
        engines.remove(model)
    after = replay(model, parse_scheme("none"), [ids], [before.output_ids], logits=True)[0]
    np.testing.assert_array_equal(after.logits, before.logits)
    diff = np.abs(emulated.logits - before.logits).mean()
    assert 1e-4 < diff < 0.5  # quantized activations move the logits a little, not wildly
    assert not any(hasattr(m, "kvfp_engine") for m in model.modules())


def test_attention_reads_the_engines_f16_cache():
    """Under the profile, K/V, the query and (without flash attention) the probabilities are seen
    at half precision: attention over values that f16 cannot hold differs from float32's."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 8, generator=g)
    k = torch.randn(1, 1, 5, 8, generator=g) * (1 + 1e-3)
    v = torch.randn(1, 1, 5, 8, generator=g)
    mask = torch.zeros(1, 1, 3, 5)
    exact, _ = LlamaCppProfile(parts=()).attention(q, k, v, mask, 0.3)
    f16, _ = LlamaCppProfile().attention(q, k, v, mask, 0.3)
    ref, _ = LlamaCppProfile(parts=()).attention(q.half().float(), k.half().float(), v.half().float(), mask, 0.3)
    assert not torch.equal(exact, f16)
    assert (f16 - ref).abs().max() < 2e-3  # what is left is the f16 rounding of the probabilities


def test_unknown_engine_and_parts_are_refused():
    with pytest.raises(UnknownNameError, match="unknown engine"):
        engines.make_profile("vllm-tpu")
    with pytest.raises(ValueError, match="unknown llama.cpp profile parts"):
        LlamaCppProfile(parts=("matmul", "magic"))
    assert engines.make_profile("transformers") is None


def test_weight_types_of_the_smollm2_gguf():
    from kvfp.models import gguf_source

    path = gguf_source("smollm2-135m")
    types = engines.weight_types_from_gguf(path)
    assert types["model.layers.0.self_attn.q_proj"] == "Q4_1"
    assert types["model.layers.29.mlp.down_proj"] == "Q4_1"
    assert types["lm_head"] == "Q8_0"  # tied to the Q8_0 token embedding
    assert len(types) == 30 * 7 + 1


def test_collect_train_identify_under_the_llama_cpp_profile(tiny, heldout_ids, tmp_path, monkeypatch):
    """--engine is recorded by collect, taken up by train as the noise yardstick, kept in the
    classifier's manifest and replayed again by identify."""
    import json

    from typer.testing import CliRunner

    from kvfp.cli.app import app
    from kvfp.probes import write_suite
    from tests.test_datasets import tiny_suite

    monkeypatch.setenv("KVFP_CACHE", str(tmp_path / "cache"))
    _, tok = tiny
    cli = CliRunner()
    suite = write_suite(tmp_path / "probes.jsonl", tiny_suite(tok, heldout_ids, lengths=(64, 64, 64)))
    out = tmp_path / "data"
    r = cli.invoke(app, ["collect", "--model", "kvfp-tiny", "--probes", str(suite), "--out", str(out),
                         "--new-tokens", "6", "-s", "none", "-s", "ggml-q4_0", "--engine", "llama.cpp",
                         "--attn", "eager"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["engine"] == "llama.cpp" and manifest["settings"]["flash_attn"] is False
    clf = tmp_path / "clf"
    r = cli.invoke(app, ["train", "--data", str(out), "--out", str(clf), "--tier", "topk-20"])
    assert r.exit_code == 0, r.output
    stored = json.loads(next(clf.glob("*.json")).read_text())
    engine = stored.get("engine") or stored.get("manifest", {}).get("engine")
    assert engine["engine"] == "llama.cpp" and engine["flash_attn"] is False
    log = tmp_path / "log.jsonl"
    r = cli.invoke(app, ["export", str(out), "--format", "openai-chat", "--scheme", "ggml-q4_0", "--out", str(log)])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf), "--probes",
                         str(suite), "--json"])
    assert r.exit_code == 0, r.output
    assert "llama.cpp noise yardstick" in r.output


def test_flash_attn_without_an_engine_is_refused(tmp_path):
    from typer.testing import CliRunner

    from kvfp.cli.app import app

    r = CliRunner().invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "none", "--out", str(tmp_path / "x"),
                                 "--flash-attn"])
    assert r.exit_code == 2 and "--engine" in r.output
    r = CliRunner().invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "none", "--out", str(tmp_path / "y"),
                                 "--engine", "vllm"])
    assert r.exit_code == 2 and "unknown engine" in r.output
