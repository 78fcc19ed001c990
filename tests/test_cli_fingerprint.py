"""`kvfp train` and `kvfp identify` end to end on kvfp-tiny: collect, train, export a held-out
run as an OpenAI chat log, identify it."""

import json

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.probes import write_suite
from tests.test_datasets import tiny_suite

runner = CliRunner()
SCHEMES = ["none", "int2-pertoken", "window-40"]


@pytest.mark.parametrize("args", [["train"], ["identify"]])
def test_help(args):
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def _collect(tmp_path, tok, heldout_ids, name, offset, extra=()):
    suite = write_suite(tmp_path / f"{name}.jsonl", tiny_suite(tok, heldout_ids, lengths=(64, 80, 96), offset=offset))
    out = tmp_path / name
    args = ["collect", "--model", "kvfp-tiny", "--probes", str(suite), "--out", str(out), "--new-tokens", "8",
            "--topk", "20", "--logits", "--attn", "eager", *extra]
    for s in SCHEMES:
        args += ["-s", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return out, suite


@pytest.fixture(scope="module")
def trained(tiny, heldout_ids, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp")
    mp = pytest.MonkeyPatch()
    mp.setenv("KVFP_CACHE", str(tmp / "cache"))  # replays and references stay inside the test
    _, tok = tiny
    data, _ = _collect(tmp, tok, heldout_ids, "train", 0)
    clf = tmp / "clf"
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(clf), "--tier", "logits", "--tier", "topk-20",
                            "--candidates", ",".join(SCHEMES), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["tiers"] == ["logits", "topk-20"] and summary["schemes"] == sorted(SCHEMES)
    # a disjoint probe set (other held-out text), served in bf16 with sdpa: the endpoint under test
    test, suite = _collect(tmp, tok, heldout_ids, "test", 5000, extra=("--dtype", "bfloat16", "--attn", "sdpa"))
    yield tmp, clf, test, suite
    mp.undo()


@pytest.mark.slow
def test_identify_names_the_scheme_of_an_unseen_chat_log(trained):
    tmp, clf, test, suite = trained
    log = tmp / "int2.jsonl"
    r = runner.invoke(app, ["export", str(test), "--format", "openai-chat", "--scheme", "int2-pertoken",
                            "--out", str(log)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf),
                            "--probes", str(suite), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    assert rep["tier"] == "topk-20"  # chat logs carry top-20 logprobs, no logits
    assert rep["n_observations"] == 3 and rep["scored_tokens"] == 24
    assert rep["pooled"]["schemes"][0][0] == "int2-pertoken" and rep["pooled"]["compressed"]
    ev = rep["evidence"]
    assert sum(ev["counts"]) == 24 and len(ev["observed"]) == len(ev["edges"]) - 1


@pytest.mark.slow
def test_identify_table_and_uncompressed_log(trained):
    tmp, clf, test, suite = trained
    log = tmp / "none.jsonl"
    r = runner.invoke(app, ["export", str(test), "--format", "kvfp-jsonl", "--scheme", "none", "--out", str(log)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf),
                            "--tier", "logits"])
    assert r.exit_code == 0, r.output
    assert "verdict:" in r.output and "evidence" in r.output
    assert "no --probes suite given" in r.output


def test_identify_refuses_missing_classifier_and_bad_tier(trained, tmp_path):
    tmp, clf, test, suite = trained
    log = tmp / "any.jsonl"
    if not log.exists():
        assert runner.invoke(app, ["export", str(test), "--format", "kvfp-jsonl", "--scheme", "window-40",
                                   "--out", str(log)]).exit_code == 0
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf),
                            "--tier", "prompt"])
    assert r.exit_code == 2 and "no prompt tier" in r.output


def test_train_refuses_existing_out_and_one_scheme(trained, tmp_path):
    tmp, clf, test, suite = trained
    r = runner.invoke(app, ["train", "--data", str(test), "--out", str(clf)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "Traceback" not in r.output


@pytest.mark.slow
def test_train_accepts_the_same_model_served_in_another_dtype(trained, tmp_path):
    # float32 and bfloat16 runs hash their loaded weights differently; one model all the same
    tmp, clf, test, suite = trained
    bf16 = tmp_path / "train-bf16"
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "none", "--probes", str(tmp / "train.jsonl"),
                            "--out", str(bf16), "--new-tokens", "8", "--dtype", "bfloat16"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--data", str(tmp / "train"), "--data", str(bf16), "--tier", "tokens",
                            "--candidates", "none", "--out", str(tmp_path / "mixed"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["observations"] == 12


def test_train_refuses_one_probe_id_meaning_two_prompts(trained, tmp_path):
    tmp, clf, test, suite = trained  # both suites name their probes plain-<n>-<i>, over other text
    r = runner.invoke(app, ["train", "--data", str(tmp / "train"), "--data", str(test), "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "means different prompts" in r.output and "Traceback" not in r.output
