"""collect → train → identify on smollm2-135m, a real pretrained model: a classifier trained on
kvfp's own traces names llama.cpp's q4_0 cache type in an OpenAI chat log (its token bytes map back
to ids exactly) of probes it never saw. (Served in bfloat16 instead, three training probes per
scheme were too few: the verdict was ggml-q8_0; benchmarks/real_engine.py is the real-engine check.)"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.probes import Probe, ProbeSuite, tokenizer_hash, write_suite
from kvfp.probes.model_tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
runner = CliRunner()
SCHEMES = ["none", "ggml-q8_0", "ggml-q4_0"]


def _suite(tok, offset: int, n: int = 3, length: int = 96) -> ProbeSuite:
    """Plain probes of held-out text, as smollm2's tokenizer cuts it (no BOS: it adds none)."""
    from kvfp.models.corpus import probe_text

    ids = tok(probe_text(max_chars=200_000), add_special_tokens=False)["input_ids"]
    probes = [Probe(id=f"plain-{length}-{offset}-{i}", family="plain", seed=0, n_tokens=length,
                    ids=ids[offset + i * length: offset + (i + 1) * length]) for i in range(n)]
    return ProbeSuite(probes, header={"suite": "test", "tokenizer_hash": tokenizer_hash(tok)})


def _collect(tmp, tok, name, offset, extra=()):
    suite = write_suite(tmp / f"{name}.jsonl", _suite(tok, offset))
    out = tmp / name
    args = ["collect", "--model", "smollm2-135m", "--probes", str(suite), "--out", str(out), "--new-tokens", "8",
            "--attn", "eager", "--batch-size", "3", *extra]
    for s in SCHEMES:
        args += ["-s", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return out, suite


def test_identify_names_a_ggml_cache_type_on_unseen_probes(smollm2, tmp_path, monkeypatch):
    root, _ = smollm2
    monkeypatch.setenv("KVFP_CACHE", str(root))  # the session's conversion; replays stay in it
    tok, _ = load_tokenizer("smollm2-135m")
    data, _ = _collect(tmp_path, tok, "train", 1000)
    clf = tmp_path / "clf"
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(clf), "--tier", "topk-20",
                            "--candidates", ",".join(SCHEMES), "--json"])
    assert r.exit_code == 0, r.output
    test, suite = _collect(tmp_path, tok, "test", 30_000)
    log = tmp_path / "q4_0.jsonl"
    r = runner.invoke(app, ["export", str(test), "--format", "openai-chat", "--scheme", "ggml-q4_0",
                            "--out", str(log)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["identify", str(log), "--model", "smollm2-135m", "--classifier", str(clf),
                            "--probes", str(suite), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout[r.stdout.index("{"):])
    pooled = report["pooled"]
    # the closed-set ranking names it; the open-set test, fitted on nine training rows, may still
    # call the sample unknown, so the verdict is either the name or "unknown", never another scheme
    assert pooled["schemes"][0][0] == "ggml-q4_0" and pooled["schemes"][0][1] > 0.9, pooled
    assert str(pooled["verdict"]) in ("ggml-q4_0", "unknown"), pooled
    assert pooled["compressed"] and pooled["gene"]["algorithm"] == "quantization", pooled


def test_unknown_ggml_cache_type_is_a_clear_error():
    r = runner.invoke(app, ["schemes", "--json"])
    assert r.exit_code == 0 and "ggml-k-q8_0-v-q4_0" in r.output
    r = CliRunner().invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "ggml-q3_0", "--out", "/tmp/never"])
    assert r.exit_code == 2
    assert "q3_0" in r.output and "q4_0" in r.output and "Traceback" not in r.output
