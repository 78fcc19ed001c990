"""``kvfp probes generate`` and ``kvfp probes show`` as a user meets them, mistakes included."""

import json

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.probes import read_suite

runner = CliRunner()
WIDE = {"COLUMNS": "240"}  # rich wraps table cells at the terminal width


@pytest.fixture(scope="module")
def quick_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("probes") / "quick.jsonl"
    r = runner.invoke(app, ["probes", "generate", "--model", "kvfp-tiny", "--suite", "quick", "--seed", "5",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.mark.parametrize("args", [["probes"], ["probes", "generate"], ["probes", "show"]])
def test_help(args):
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def test_generate_writes_the_suite_and_says_so(quick_file):
    out, output = quick_file
    suite = read_suite(out)
    h = suite.header
    assert h["suite"] == "quick" and h["seed"] == 5 and h["model"] == "kvfp-tiny"
    assert all(p.seed == 5 for p in suite.probes)
    assert output.count("\n") == 1 and f"{len(suite)} probes" in output and suite.hash[:16] in output


def test_generate_honours_lengths(tmp_path):
    out = tmp_path / "p.jsonl"
    r = runner.invoke(app, ["probes", "generate", "-m", "kvfp-tiny", "--suite", "quick", "--lengths", "384,640",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    suite = read_suite(out)
    assert suite.header["lengths"] == [384, 640]
    assert {p.n_tokens for p in suite.probes if p.family != "short"} == {384, 640}


def test_show_lists_every_probe(quick_file):
    out, _ = quick_file
    r = runner.invoke(app, ["probes", "show", str(out)], env=WIDE)
    assert r.exit_code == 0, r.output
    for p in read_suite(out).probes:
        assert p.id in r.output and p.family in r.output


def test_show_one_probe_decodes_its_planted_spans(quick_file):
    out, _ = quick_file
    needle = next(p for p in read_suite(out).probes if p.family == "needle")
    r = runner.invoke(app, ["probes", "show", str(out), "--id", needle.id], env=WIDE)
    assert r.exit_code == 0, r.output
    assert f"⟦{needle.params['value']}⟧" in r.output  # the value span, and the answer
    assert r.output.count(needle.params["key"]) >= 2  # planted and asked
    for name, (a, b) in needle.spans.items():
        assert f"{name} [{a}, {b})" in r.output


def test_existing_output_is_never_overwritten(quick_file):
    out, _ = quick_file
    before = out.read_bytes()
    r = runner.invoke(app, ["probes", "generate", "--model", "kvfp-tiny", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    assert out.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--suite", "everything"], "unknown probe suite"),
    (["--lengths", "512,abc"], "comma-separated"),
    (["--lengths", "512,1000000"], "exceeds the model's maximum"),
    (["--model", "no-such/model-anywhere"], "not found"),
])
def test_generate_refuses_bad_arguments(tmp_path, args, message):
    argv = ["probes", "generate", "--out", str(tmp_path / "p.jsonl")]
    if "--model" not in args:
        argv += ["--model", "kvfp-tiny"]
    r = runner.invoke(app, argv + args, env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p.jsonl").exists()


def test_show_refuses_malformed_files_naming_the_line(tmp_path, quick_file):
    out, _ = quick_file
    lines = out.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1][: len(lines[1]) // 2], *lines[2:]]) + "\n")
    r = runner.invoke(app, ["probes", "show", str(bad)])
    assert r.exit_code == 1 and f"{bad}:2" in r.output and "Traceback" not in r.output

    record = json.loads(lines[1])
    record["ids"] = record["ids"][:-1]  # n_tokens no longer matches
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    r = runner.invoke(app, ["probes", "show", str(edited)])
    assert r.exit_code == 1 and f"{edited}:2" in r.output

    r = runner.invoke(app, ["probes", "show", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "not found" in r.output


def test_show_refuses_an_unknown_id(quick_file):
    out, _ = quick_file
    r = runner.invoke(app, ["probes", "show", str(out), "--id", "needle-99-s0"])
    assert r.exit_code == 2 and "no probe 'needle-99-s0'" in r.output
