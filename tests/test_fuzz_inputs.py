"""Property: whatever a stranger's file holds, kvfp either succeeds or stops with a one-line message
and exit code 1 or 2, never a traceback, and never leaves a partial output behind.

Valid artifacts are built once (a kvfp-tiny log, its probe suite, a classifier); hypothesis then
mutates them (truncation, bit flips, a value swapped for one of another type, deep nesting, huge
numbers, array shapes) and runs the CLI on each mutant. The number of examples is bounded so the
suite stays fast; ``derandomize`` makes CI runs repeatable.
"""

import json
import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kvfp.cli.app import app
from tests.test_cli_fingerprint import SCHEMES, own_cache, train_topk20

runner = CliRunner()
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def valid(tiny, heldout_ids, tmp_path_factory):
    with own_cache(tmp_path_factory, "fuzz") as tmp:
        _, tok = tiny
        data, suite, clf = train_topk20(tmp, tok, heldout_ids)
        log = tmp / "log.jsonl"
        r = runner.invoke(app, ["export", str(data), "--format", "openai-completions", "--scheme", "int2-pertoken",
                                "--out", str(log)])
        assert r.exit_code == 0, r.output
        yield tmp, clf, log, suite


def outcome_is_clean(r) -> None:
    """Exit 0, or 1/2 with a message and no traceback."""
    exc = r.exception
    assert exc is None or isinstance(exc, SystemExit), f"unhandled {type(exc).__name__}: {exc}\n{r.output[-2000:]}"
    assert r.exit_code in (0, 1, 2), r.output[-2000:]
    assert "Traceback" not in r.output
    if r.exit_code:
        assert "error" in r.output.lower()


# ---- mutations of a JSON-lines file ------------------------------------------------------------

def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


OTHER_VALUES = [None, True, -1, 0, 10 ** 400, 1e308, -1e308, "x", "", [], {}, [[[]]], {"a": None}, "NaN"]


def mutate_jsonl(text: str, how: str, rnd: random.Random) -> bytes:
    data = text.encode()
    if how == "truncate":
        return data[: rnd.randrange(len(data))]
    if how == "bitflip":
        b = bytearray(data)
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        return bytes(b)
    if how == "nesting":
        return ("[" * 200_000 + "]" * 200_000 + "\n").encode() + data
    lines = text.splitlines()
    n = rnd.randrange(len(lines))
    rec = json.loads(lines[n])
    path = rnd.choice(list(_paths(rec))[1:])
    rec = _replace(rec, path, rnd.choice(OTHER_VALUES))
    lines[n] = json.dumps(rec)
    return ("\n".join(lines) + "\n").encode()


MUTATIONS = st.sampled_from(["truncate", "bitflip", "nesting", "retype"])


@FUZZ
@given(how=MUTATIONS, seed=st.integers(0, 2 ** 31))
def test_identify_on_a_mutated_log(valid, tmp_path, how, seed):
    tmp, clf, log, suite = valid
    bad = tmp_path / f"log-{how}-{seed}.jsonl"
    bad.write_bytes(mutate_jsonl(log.read_text(), how, random.Random(seed)))
    r = runner.invoke(app, ["identify", str(bad), "--model", "kvfp-tiny", "--classifier", str(clf),
                            "--probes", str(suite)])
    outcome_is_clean(r)


@FUZZ
@given(how=MUTATIONS, seed=st.integers(0, 2 ** 31))
def test_collect_on_a_mutated_probe_suite(valid, tmp_path, how, seed):
    tmp, clf, log, suite = valid
    bad = tmp_path / f"suite-{how}-{seed}.jsonl"
    bad.write_bytes(mutate_jsonl(suite.read_text(), how, random.Random(seed)))
    out = tmp_path / f"out-{how}-{seed}"
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "--probes", str(bad), "--scheme", "none",
                            "--out", str(out), "--new-tokens", "2", "--topk", "5"])
    outcome_is_clean(r)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp-")] if out.exists() else []
    assert not leftovers, leftovers
    if r.exit_code == 0:
        assert json.loads((out / "manifest.json").read_text())["schemes"]


# ---- mutations of a classifier folder -----------------------------------------------------------

def mutate_classifier(src, dst, how: str, rnd: random.Random) -> None:
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    arrays = load_file(str(src / "arrays.safetensors"))
    doc_text = (src / "fingerprinter.json").read_text()
    keys = sorted(arrays)
    k = rnd.choice(keys)
    if how == "shape":
        a = arrays[k]
        arrays[k] = np.ascontiguousarray(np.resize(a, (a.size + rnd.randint(1, 5),)).astype(a.dtype))
    elif how == "values":
        a = arrays[k].copy()
        if a.dtype.kind == "f":
            a.flat[rnd.randrange(a.size)] = rnd.choice([np.nan, np.inf, 1e300, 0.0])
        elif a.size:
            a.flat[rnd.randrange(a.size)] = np.iinfo(a.dtype).max
        arrays[k] = a
    elif how == "drop":
        del arrays[k]
    save_file(arrays, str(dst / "arrays.safetensors"))
    data = doc_text
    if how in ("truncate", "bitflip", "retype", "nesting"):
        data = mutate_jsonl(doc_text.replace("\n", " "), how, rnd).decode("utf-8", errors="replace")
    (dst / "fingerprinter.json").write_text(data)


@FUZZ
@given(how=st.sampled_from(["shape", "values", "drop", "truncate", "bitflip", "retype", "nesting"]),
       seed=st.integers(0, 2 ** 31))
def test_identify_with_a_mutated_classifier(valid, tmp_path, how, seed):
    tmp, clf, log, suite = valid
    bad = tmp_path / f"clf-{how}-{seed}"
    mutate_classifier(clf, bad, how, random.Random(seed))
    files = ("arrays.safetensors", "fingerprinter.json")
    changed = any((bad / n).read_bytes() != (clf / n).read_bytes() for n in files)
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(bad),
                            "--probes", str(suite), "--json"])
    outcome_is_clean(r)
    assert r.exit_code != 0 or not changed, "an altered classifier gave a verdict"


def test_the_unmutated_artifacts_identify_cleanly(valid):
    tmp, clf, log, suite = valid
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf),
                            "--probes", str(suite), "--json"])
    assert r.exit_code == 0, r.output
    assert os.path.getsize(log) > 0


# ---- mutations of a dataset folder (kvfp train reads it) ----------------------------------------

@settings(FUZZ, max_examples=10)
@given(how=MUTATIONS, seed=st.integers(0, 2 ** 31))
def test_train_on_a_dataset_with_a_mutated_manifest(valid, tmp_path, how, seed):
    import shutil

    tmp, clf, log, suite = valid
    data = tmp_path / f"data-{how}-{seed}"
    shutil.rmtree(data, ignore_errors=True)  # hypothesis may run one example twice
    shutil.copytree(tmp / "train", data)
    compact = json.dumps(json.loads((data / "manifest.json").read_text())) + "\n"
    (data / "manifest.json").write_bytes(mutate_jsonl(compact, how, random.Random(seed)))
    out = tmp_path / f"clf-{how}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--tier", "topk-20",
                            "--candidates", ",".join(SCHEMES)])
    outcome_is_clean(r)
    if r.exit_code:
        assert not out.exists() or not any(out.iterdir()), "a failed train left output behind"
