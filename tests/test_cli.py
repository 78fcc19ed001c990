"""The CLI as a user meets it: help, version, models, collect, and the mistakes users make."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.datasets import read_traces

runner = CliRunner()


HELP_CASES = [[], ["version"], ["collect"], ["schemes"], ["models"], ["models", "list"], ["models", "train-tiny"]]


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


def test_collect_writes_traces_and_compares(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "-s", "int8-pertoken", "-s", "window-300",
                            "--out", str(out), "--new-tokens", "6", "--topk", "5", "--logits", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert set(summary["schemes"]) == {"int8-pertoken", "window-300"}
    assert summary["schemes"]["int8-pertoken"]["bytes_per_token_layer"] < \
        summary["schemes"]["int8-pertoken"]["uncompressed_bytes_per_token_layer"]
    manifest, traces = read_traces(out)
    assert manifest["model"] == "kvfp-tiny" and manifest["n_traces"] == len(traces) == 8
    assert [s["name"] for s in manifest["schemes"]] == ["int8-pertoken", "window-300"]
    tr = traces[0]
    assert tr.meta["scheme"] == "int8-pertoken" and tr.meta["probe"]["id"] == "builtin-0"
    assert tr.meta["nuisance"]["dtype"] == "float32" and tr.meta["nuisance"]["attn"] == "sdpa"
    assert len(tr.prompt_ids) == tr.meta["probe"]["n_tokens"] == 256
    assert tr.steps == 6 and len(tr.topk_ids[0]) == 5 and tr.logits.shape == (6, 8192)


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
