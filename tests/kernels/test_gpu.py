"""On CUDA: generation with kernel-backed schemes matches the reference path, and the fused decode
attention matches its reference at a Llama-like shape. Skipped where there is no GPU; never
needed for the suite to pass."""

import numpy as np
import pytest
import torch

from kvfp.compressors import parse_scheme
from kvfp.kernels import dispatch
from kvfp.kernels.decode_attention_ref import decode_attention_ref
from kvfp.kernels.quant_layout import QuantLayout
from kvfp.models import load
from kvfp.models.corpus import probe_text
from kvfp.runner import generate

pytestmark = [pytest.mark.gpu, pytest.mark.triton,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

NEW = 12
LOGIT_ATOL = 1e-3  # float32 model; codes are identical, only kernels' summation orders differ


@pytest.fixture(scope="module")
def tiny_cuda():
    return load("kvfp-tiny", dtype="float32", device="cuda")


@pytest.fixture
def kernels_used(monkeypatch):
    """Names of the Triton modules the dispatcher loads while the test runs."""
    used = []
    real = dispatch._kernels

    def spy(name):
        used.append(name)
        return real(name)

    monkeypatch.setattr(dispatch, "_kernels", spy)
    return used


@pytest.mark.parametrize("name, module", [
    ("int4-pertoken", "quant_triton"), ("int8-pertoken", "quant_triton"), ("int4-pertoken-zp", "quant_triton"),
    ("kivi-2", "quant_triton"), ("fp8-e4m3", "quant_triton"), ("h2o-0.5", "scores_triton"),
    ("snapkv-0.5", "scores_triton"),
])
def test_generation_matches_the_reference_path(tiny_cuda, kernels_used, name, module):
    model, tok = tiny_cuda
    ids = tok(probe_text(40_000), add_special_tokens=False)["input_ids"]
    prompts = [[tok.bos_token_id] + ids[:180], [tok.bos_token_id] + ids[500:620]]  # ragged: left padding
    scheme = parse_scheme(name)
    with dispatch.backend("reference"):
        ref = generate(model, scheme, prompts, NEW, logits=True, batch_size=2)
    assert kernels_used == []
    with dispatch.backend("triton"):
        out = generate(model, scheme, prompts, NEW, logits=True, batch_size=2)
    assert module in kernels_used
    for r, o in zip(ref, out):
        assert o.output_ids == r.output_ids
        np.testing.assert_allclose(o.logits, r.logits, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("cache", ["int4-pertoken", "kivi-2", "kivi-4"])
def test_fused_decode_attention_at_llama_shape(cache):
    """B=2, 32 query / 8 KV heads, head_dim 128, 4096 quantized entries (+128 exact for KIVI)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, Hkv, D, S = 2, 32, 8, 128, 4096
    if cache == "int4-pertoken":
        k_layout = v_layout = QuantLayout.per_token(4)
        R = 0
    else:
        bits = int(cache[-1])
        k_layout, v_layout, R = QuantLayout.channel_blocks(bits, 32), QuantLayout.channel_groups(bits, 32), 128
    k = torch.randn(B, Hkv, S, D, device="cuda", generator=g, dtype=torch.float16)
    v = torch.randn(B, Hkv, S, D, device="cuda", generator=g, dtype=torch.float16)
    q = torch.randn(B, H, 1, D, device="cuda", generator=g, dtype=torch.float16)
    kr = torch.randn(B, Hkv, R, D, device="cuda", generator=g, dtype=torch.float16) if R else None
    vr = torch.randn(B, Hkv, R, D, device="cuda", generator=g, dtype=torch.float16) if R else None
    kq, vq = dispatch.quantize_packed(k, k_layout), dispatch.quantize_packed(v, v_layout)
    out = dispatch.decode_attention(q, kq, vq, kr, vr)
    ref = decode_attention_ref(q, kq, vq, kr, vr)
    assert (out.float() - ref.float()).abs().max().item() <= 4e-3
