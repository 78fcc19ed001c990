"""`kvfp train` and `kvfp identify` end to end on kvfp-tiny: collect, train, export a held-out
run as an OpenAI chat log, identify it."""

import json
from contextlib import contextmanager

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


@contextmanager
def own_cache(tmp_path_factory, name: str):
    """A fresh folder whose ``cache`` holds every replay and reference made inside the block."""
    tmp = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(tmp / "cache"))
        yield tmp


def train_topk20(tmp_path, tok, heldout_ids):
    """``(dataset, suite file, classifier)``: SCHEMES collected on held-out text, a top-20 classifier on them."""
    data, suite = _collect(tmp_path, tok, heldout_ids, "train", 0)
    clf = tmp_path / "clf"
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(clf), "--tier", "topk-20",
                            "--candidates", ",".join(SCHEMES)])
    assert r.exit_code == 0, r.output
    return data, suite, clf


@pytest.fixture(scope="module")
def trained(tiny, heldout_ids, tmp_path_factory):
    with own_cache(tmp_path_factory, "fp") as tmp:  # replays and references stay inside the test
        _, tok = tiny
        data, _ = _collect(tmp, tok, heldout_ids, "train", 0)
        clf = tmp / "clf"
        r = runner.invoke(app, ["train", "--data", str(data), "--out", str(clf), "--tier", "logits",
                                "--tier", "topk-20", "--candidates", ",".join(SCHEMES), "--json"])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout[r.stdout.index("{"):])
        assert summary["tiers"] == ["logits", "topk-20"] and summary["schemes"] == sorted(SCHEMES)
        # a disjoint probe set (other held-out text), served in bf16 with sdpa: the endpoint under test
        test, suite = _collect(tmp, tok, heldout_ids, "test", 5000, extra=("--dtype", "bfloat16", "--attn", "sdpa"))
        yield tmp, clf, test, suite


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


def _kvfp_line(**changes) -> str:
    from tests.fingerprint.test_readers_errors import sample

    return json.dumps({**sample("kvfp"), **changes}) + "\n"


def _long_line() -> str:
    """A kvfp-tiny response of 4000 prompt and 200 output tokens: past its 4096 positions."""
    n = 200
    return _kvfp_line(prompt_ids=[0] + [341] * 3999, output_ids=[14] * n, token_logprobs=[-1.0] * n,
                      topk_ids=[[14, 16]] * n, topk_logprobs=[[-1.0, -2.0]] * n, prompt_logprobs=None)


@pytest.mark.parametrize("body, probes, code, message", [
    ("[" * 100_000 + "\n", None, 1, "log.jsonl:1: JSON nested too deeply"),
    (None, None, 2, "is a folder; pass the log file"),
    (_kvfp_line(token_logprobs=[0.0] * 3), None, 1,
     "log.jsonl:1: topk_ids[0][0]: step 0: the chosen token (id 341) has logprob -0.5 here but 0.0"),
    (_long_line(), None, 1, "log.jsonl:1: prompt (4000 tokens) and output (200 tokens) make 4200, more than the "
                            "model's 4096 positions"),
    (_kvfp_line(), b"\xff\xfe\x00\n", 1, "probes.jsonl:1: not UTF-8 text"),
], ids=["nested", "folder", "inconsistent logprobs", "longer than the model", "binary probes"])
def test_identify_refuses_a_broken_log_or_suite_before_any_replay(trained, tmp_path, monkeypatch, body, probes,
                                                                    code, message):
    from kvfp.fingerprint.reference import ReferenceRunner
    from tests.test_cli_errors import assert_refused

    _, clf, _, _ = trained
    monkeypatch.setattr(ReferenceRunner, "references", lambda *a, **k: pytest.fail("replayed"))
    # nor are the model's weights loaded: every input is checked first
    monkeypatch.setattr("kvfp.models.load", lambda *a, **k: pytest.fail("loaded the model before checking inputs"))
    log = tmp_path / "log.jsonl"
    if body is None:
        log.mkdir()
    else:
        log.write_text(body)
    args = ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf)]
    if probes is not None:
        (tmp_path / "probes.jsonl").write_bytes(probes)
        args += ["--probes", str(tmp_path / "probes.jsonl")]
    assert_refused(runner.invoke(app, args), code, message)


def test_export_out_under_a_file_or_on_a_full_disk_leaves_nothing(trained, tmp_path, monkeypatch):
    from kvfp.datasets import export as export_module
    from tests.test_cli_errors import assert_refused

    _, _, test, _ = trained
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["export", str(test), "--format", "kvfp-jsonl", "--out", str(tmp_path / "file" / "x")])
    assert_refused(r, 1, f"{tmp_path / 'file'} is a file where a folder is needed")

    lines = export_module._lines

    def full(*args):  # the disk fills after the first line
        yield next(iter(lines(*args)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_lines", full)
    out = tmp_path / "out" / "log.jsonl"
    r = runner.invoke(app, ["export", str(test), "--format", "kvfp-jsonl", "--out", str(out)])
    assert_refused(r, 1, f"{out}: No space left on device")
    assert list((tmp_path / "out").iterdir()) == []  # neither the log nor its temporary


def test_train_out_under_a_file_or_on_a_full_disk_leaves_nothing(trained, tmp_path, monkeypatch):
    import safetensors.numpy
    from safetensors import SafetensorError

    from tests.test_cli_errors import assert_refused

    tmp, _, _, _ = trained
    args = ["train", "--data", str(tmp / "train"), "--tier", "tokens", "--candidates", "none", "--out"]
    (tmp_path / "file").write_text("x")
    assert_refused(runner.invoke(app, [*args, str(tmp_path / "file" / "clf")]), 1,
                   f"{tmp_path / 'file'} is a file where a folder is needed")

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    out = tmp_path / "out" / "clf"
    assert_refused(runner.invoke(app, [*args, str(out)]), 1, f"cannot write {out}:", "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []  # the folder is built beside its name and removed
