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


def _edit_probe(edit):
    def make(header: dict, probe: dict) -> str:
        edit(probe)
        return json.dumps(header) + "\n" + json.dumps(probe) + "\n"
    return make


@pytest.mark.parametrize("body, message", [
    (b"\xff\xfe\x00garbage\n", ":1: not UTF-8 text"),
    (lambda h, p: json.dumps(h) + "\n" + "[" * 100_000 + "\n", ":2: JSON nested too deeply"),
    (_edit_probe(lambda p: p.pop("ids")), ":2: bad probe record (missing field 'ids')"),
    (_edit_probe(lambda p: p.update(spans=[1, 2])), ":2: bad probe record (spans: expected an object, found list)"),
    (_edit_probe(lambda p: p.update(id=5)), ":2: bad probe record (id: expected a string, found 5)"),
    (_edit_probe(lambda p: p["ids"].__setitem__(0, 1.5)), ":2: bad probe record (ids[0]: expected an integer"),
    (_edit_probe(lambda p: p["ids"].__setitem__(0, -3)), ":2: bad probe record (ids[0]: -3 is negative)"),
    (lambda h, p: json.dumps(h) + "\n[1, 2]\n", ":2: bad probe record (expected a JSON object, found list)"),
], ids=["binary", "nested", "missing ids", "spans a list", "id a number", "float id", "negative id", "a list"])
def test_show_refuses_a_broken_suite_naming_line_and_field(tmp_path, quick_file, body, message):
    from tests.test_cli_errors import assert_refused

    out, _ = quick_file
    lines = out.read_text().splitlines()
    header, probe = json.loads(lines[0]), json.loads(lines[1])
    del header["suite_hash"]  # the record is read before the hash could tell
    bad = tmp_path / "bad.jsonl"
    if isinstance(body, bytes):
        bad.write_bytes(body)
    else:
        bad.write_text(body(header, probe))
    assert_refused(runner.invoke(app, ["probes", "show", str(bad)]), 1, f"{bad}{message}")


def test_show_says_a_folder_is_a_folder(tmp_path):
    from tests.test_cli_errors import assert_refused

    assert_refused(runner.invoke(app, ["probes", "show", str(tmp_path)]), 2, f"probe suite {tmp_path} is a folder")


def _generate(out, model="kvfp-tiny"):
    return runner.invoke(app, ["probes", "generate", "--model", str(model), "--suite", "quick", "--out", str(out)])


def test_generate_out_under_a_file_or_nowhere_gives_the_os_reason(tmp_path):
    from tests.test_cli_errors import assert_refused

    (tmp_path / "file").write_text("x")
    blocker = tmp_path / "file"
    assert_refused(_generate(blocker / "p.jsonl"), 1, f"{blocker} is a file where a folder is needed")
    assert_refused(_generate("/proc/kvfp-none/p.jsonl"), 1, "/proc/kvfp-none: No such file or directory")


def test_generate_on_a_full_disk_leaves_no_file(tmp_path, monkeypatch):
    import os
    import types

    from kvfp.probes import probe
    from tests.test_cli_errors import assert_refused

    class Full:  # a file on a full disk: every write fails as write(2) does
        def __init__(self, fd, mode):
            self.f = os.fdopen(fd, mode)

        def write(self, text):
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(probe, "os", types.SimpleNamespace(fdopen=Full, replace=os.replace))
    out = tmp_path / "p.jsonl"
    assert_refused(_generate(out), 1, f"{out}: No space left on device")
    assert list(tmp_path.iterdir()) == []  # neither the suite nor its temporary


def test_generate_names_a_model_folder_whose_config_is_broken(tmp_path):
    from tests.test_cli_errors import assert_refused, broken_model_folder

    folder = broken_model_folder(tmp_path)
    out = tmp_path / "p.jsonl"
    assert_refused(_generate(out, folder), 1, f"model folder {folder} does not load", "'hidden_size' expected int")
    assert not out.exists()
