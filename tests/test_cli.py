"""The CLI as a user meets it: help, version, models, collect, and the mistakes users make."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.datasets import open_dataset

runner = CliRunner()


HELP_CASES = [[], ["version"], ["collect"], ["export"], ["schemes"], ["models"], ["models", "list"],
              ["models", "train-tiny"]]


@pytest.mark.parametrize("args", HELP_CASES)
def test_help(args):
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "kvfp", "version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("kvfp ")


def test_models_list_shows_packaged_model():
    r = runner.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0
    names = [m["name"] for m in json.loads(r.output)]
    assert "kvfp-tiny" in names


def test_collect_writes_a_dataset_and_compares(tmp_path, tiny, heldout_ids, monkeypatch):
    from kvfp.probes import write_suite
    from tests.test_datasets import tiny_suite

    monkeypatch.setenv("KVFP_CACHE", str(tmp_path / "cache"))
    _, tok = tiny
    suite = write_suite(tmp_path / "suite.jsonl", tiny_suite(tok, heldout_ids, lengths=(64, 80)))
    out = tmp_path / "run"
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "int8-pertoken", "-s", "window-30",
                            "--probes", str(suite), "--out", str(out), "--new-tokens", "6", "--topk", "5",
                            "--logits", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(summary["schemes"]) == {"int8-pertoken", "window-30"}
    s8 = summary["schemes"]["int8-pertoken"]
    assert s8["bytes_per_token_layer"] < s8["uncompressed_bytes_per_token_layer"]
    # one shard of both probes per scheme, plus the none reference the comparison needs
    assert s8["token_agreement"] is not None and summary["units"] == {"total": 3, "done_before": 0, "run_here": 3,
                                                                      "left": 0}
    ds = open_dataset(out)
    assert ds.manifest["model"]["id"] == "kvfp-tiny" and ds.schemes == ["int8-pertoken", "window-30"]
    traces = list(ds.traces())
    assert len(traces) == 4 and summary["traces"] == 4
    tr = traces[0]
    assert tr.meta["scheme"] == "int8-pertoken" and tr.meta["probe"]["id"] == "plain-64-0"
    assert tr.meta["nuisance"]["dtype"] == "float32" and tr.meta["nuisance"]["attn"] == "sdpa"
    assert len(tr.prompt_ids) == tr.meta["probe"]["n_tokens"] == 64
    assert tr.steps == 6 and len(tr.topk_ids[0]) == 5 and tr.logits.shape == (6, 8192)
    assert len(tr.prompt_logprobs) == 64


def test_collect_without_probes_generates_the_default_suite(tmp_path, tiny, heldout_ids, monkeypatch):
    import kvfp.probes
    from tests.test_datasets import tiny_suite

    monkeypatch.setenv("KVFP_CACHE", str(tmp_path / "cache"))
    calls = []

    def small_default(tokenizer, suite="default", seed=0, **kwargs):
        calls.append((suite, seed, kwargs.get("model_max")))
        return tiny_suite(tokenizer, heldout_ids, lengths=(40,))

    monkeypatch.setattr(kvfp.probes, "generate_suite", small_default)
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "none", "--out", str(tmp_path / "d"),
                            "--new-tokens", "2"])
    assert r.exit_code == 0, r.output
    assert calls == [("default", 0, tiny[0].config.max_position_embeddings)]
    assert open_dataset(tmp_path / "d").probes.hash == tiny_suite(tiny[1], heldout_ids, lengths=(40,)).hash


@pytest.mark.slow
def test_collect_with_a_suite_name_generates_it(tmp_path, tiny, monkeypatch):
    from kvfp.probes import generate_suite

    monkeypatch.setenv("KVFP_CACHE", str(tmp_path / "cache"))
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "none", "--probes", "quick",
                            "--out", str(tmp_path / "d"), "--new-tokens", "1", "--shard-size", "8"])
    assert r.exit_code == 0, r.output
    want = generate_suite(tiny[1], "quick", seed=0, model_max=tiny[0].config.max_position_embeddings)
    ds = open_dataset(tmp_path / "d")
    assert ds.probes.hash == want.hash and ds.complete


def test_existing_output_folder_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "none", "--out", str(out)])
    assert r.exit_code == 2
    assert "already exists" in r.output
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kvfp", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_unknown_scheme_lists_valid_names_without_traceback(tmp_path):
    r = _run_cli("collect", "--model", "kvfp-tiny", "-s", "int8-pertokn", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "int8-pertoken" in r.stderr and "Valid names" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "x").exists()


def test_unknown_model_says_what_to_pass_without_traceback(tmp_path):
    r = _run_cli("collect", "--model", "no-such-model", "-s", "none", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "kvfp-tiny" in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_folder_without_config_is_refused(tmp_path):
    r = _run_cli("collect", "--model", str(tmp_path), "-s", "none", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "config.json" in r.stderr


def test_schemes_lists_canonical_names_with_genes():
    from kvfp.compressors import canonical_names

    r = runner.invoke(app, ["schemes", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["name"] for row in rows] == canonical_names()
    assert all({"algorithm", "granularity", "phase", "params"} <= set(row["gene"]) for row in rows)


def test_schemes_measure_reports_real_bytes():
    r = runner.invoke(app, ["schemes", "--model", "kvfp-tiny", "--measure", "--json",
                            "-s", "none", "-s", "int8-pertoken", "-s", "window-256"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout[r.stdout.index("["):])}
    full = rows["none"]["uncompressed_bytes_per_token_layer"]
    assert full == 2 * 2 * 32 * 4  # K and V, 2 KV heads, head_dim 32, float32
    assert rows["none"]["bytes_per_token_layer"] == full
    # int8: one byte per value plus one float32 scale per token per head, for K and V
    assert rows["int8-pertoken"]["bytes_per_token_layer"] == 2 * 2 * (32 + 4)
    # the window keeps 256 of the 1024 + 7 tokens it has seen
    assert rows["window-256"]["bytes_per_token_layer"] == pytest.approx(full * 256 / 1031)


def test_schemes_measure_needs_a_model():
    r = runner.invoke(app, ["schemes", "--measure"])
    assert r.exit_code == 2 and "--model" in r.output


def test_cli_sets_passive_openmp_waiting_before_torch_loads():
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import sys; import kvfp.cli; assert 'torch' not in sys.modules; import os; "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's own setting stays
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
