"""Collection: resumable after SIGKILL, shareable between processes, reusing cached references."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvfp.collect import CollectSpec, collect, expand_schemes
from kvfp.collect.claims import Claims
from kvfp.datasets import open_dataset
from kvfp.errors import KvfpError
from kvfp.probes import write_suite
from tests.test_datasets import assert_same_traces, tiny_suite

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("none", "int8-pertoken", "window-32")
# threads pinned: results are bit-exact only at one thread count (see CollectSpec)
SETTINGS = {"new_tokens": 4, "topk": 5, "shard_size": 1, "threads": 2}
LENGTHS = (64, 72, 80)


@pytest.fixture(scope="module")
def work(tiny, heldout_ids, tmp_path_factory):
    """A probe suite file, a private cache, and the dataset one uninterrupted process writes."""
    _, tok = tiny
    root = tmp_path_factory.mktemp("collect")
    suite = write_suite(root / "suite.jsonl", tiny_suite(tok, heldout_ids, LENGTHS))
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(cache))
        result = collect(CollectSpec(model="kvfp-tiny", schemes=SCHEMES, out=root / "single", probes=str(suite),
                                     **SETTINGS), show_progress=False)
    assert result["units"]["run_here"] == len(SCHEMES) * len(LENGTHS)
    return {"root": root, "suite": suite, "cache": cache, "single": root / "single"}


@pytest.fixture
def cache_env(work, monkeypatch):
    monkeypatch.setenv("KVFP_CACHE", str(work["cache"]))


def _cli(work, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "kvfp", "collect", "--model", "kvfp-tiny", "--probes", str(work["suite"]),
            "--out", str(out), "--new-tokens", str(SETTINGS["new_tokens"]), "--topk", str(SETTINGS["topk"]),
            "--shard-size", str(SETTINGS["shard_size"]), "--threads", str(SETTINGS["threads"])]
    for s in SCHEMES:
        args += ["-s", s]
    return args + list(extra)


def _env(work, fresh_cache: Path | None = None) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "KVFP_CACHE": str(fresh_cache or work["cache"])}


def _shard_files(out: Path) -> list[Path]:
    """Published shards (a writer's temporaries are dot-files with the same suffix)."""
    if not (out / "shards").is_dir():
        return []
    return sorted(p for p in (out / "shards").rglob("shard-*.parquet") if not p.name.startswith("."))


def assert_same_dataset(a: Path, b: Path) -> None:
    da, db = open_dataset(a), open_dataset(b)
    assert da.complete and db.complete
    assert da.manifest["probes"] == db.manifest["probes"] and da.schemes == db.schemes
    for s in da.schemes:
        assert_same_traces(list(da.traces(s)), list(db.traces(s)))


def test_resume_after_sigkill_loses_and_duplicates_nothing(work, cache_env, tmp_path):
    out = tmp_path / "killed"
    # a cache of its own, so the killed run really computes its none units
    proc = subprocess.Popen(_cli(work, out), cwd=ROOT, env=_env(work, tmp_path / "cache"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while len(_shard_files(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    total = len(SCHEMES) * len(LENGTHS)
    done = len(_shard_files(out))
    assert 2 <= done < total, "the run was not killed mid-way; the test proves nothing"

    result = collect(CollectSpec(model="kvfp-tiny", schemes=SCHEMES, out=out, probes=str(work["suite"]), **SETTINGS),
                     show_progress=False)
    assert result["units"]["done_before"] == done
    assert result["units"]["run_here"] == total - done and result["units"]["left"] == 0
    names = [p.relative_to(out / "shards").as_posix() for p in _shard_files(out)]
    assert len(names) == len(set(names)) == total
    assert not list(out.rglob(".tmp-*")), "temporaries of the killed run must be cleared"
    assert not list((out / ".claims").glob("*.lock")), "claims must be released or taken over"
    assert_same_dataset(out, work["single"])


def test_two_processes_on_one_folder_equal_one_process(work, cache_env, tmp_path):
    out = tmp_path / "shared"
    other = subprocess.Popen(_cli(work, out, "--json"), cwd=ROOT, env=_env(work), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    # this test process is the second worker; it starts once the other holds its first unit
    deadline = time.time() + 180
    while not list((out / ".claims").glob("*.lock")) and other.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    here = collect(CollectSpec(model="kvfp-tiny", schemes=SCHEMES, out=out, probes=str(work["suite"]), **SETTINGS),
                   show_progress=False)
    stdout, stderr = other.communicate(timeout=300)
    assert other.returncode == 0, stderr
    there = json.loads(stdout[stdout.index("{"):])
    # every unit ran exactly once, in one process or the other
    assert here["units"]["run_here"] + there["units"]["run_here"] == len(SCHEMES) * len(LENGTHS)
    assert here["units"]["left"] == there["units"]["left"] == 0
    assert_same_dataset(out, work["single"])


@pytest.mark.slow
def test_workers_option_spawns_processes_that_share_the_units(work, cache_env, tmp_path):
    out = tmp_path / "workers"
    result = collect(CollectSpec(model="kvfp-tiny", schemes=SCHEMES, out=out, probes=str(work["suite"]), workers=2,
                                 **SETTINGS), show_progress=False)
    assert result["units"]["left"] == 0 and result["traces"] == len(SCHEMES) * len(LENGTHS)
    assert_same_dataset(out, work["single"])


def test_reference_cache_serves_none_and_the_summary(work, cache_env, tmp_path, monkeypatch):
    import kvfp.collect.units as units

    real = units.generate

    def no_none(model, scheme, *a, **k):
        if scheme.name == "none":
            raise AssertionError("none was recomputed although the cache holds it")
        return real(model, scheme, *a, **k)

    monkeypatch.setattr(units, "generate", no_none)
    spec = CollectSpec(model="kvfp-tiny", schemes=("int8-pertoken", "none"), out=tmp_path / "d",
                       probes=str(work["suite"]), **SETTINGS)
    result = collect(spec, show_progress=False)
    assert result["schemes"]["none"]["token_agreement"] == 1.0
    ref = list(open_dataset(work["single"]).traces("none"))
    assert_same_traces(list(open_dataset(tmp_path / "d").traces("none")), ref)


def test_summary_without_none_fills_the_cache_not_the_dataset(work, tmp_path, monkeypatch):
    monkeypatch.setenv("KVFP_CACHE", str(tmp_path / "cache"))
    spec = CollectSpec(model="kvfp-tiny", schemes=("window-32",), out=tmp_path / "d", probes=str(work["suite"]),
                       **SETTINGS)
    result = collect(spec, show_progress=False)
    assert open_dataset(tmp_path / "d").schemes == ["window-32"]
    assert not (tmp_path / "d" / "shards" / "none").exists()
    assert len(list((tmp_path / "cache" / "references").rglob("shard-*.parquet"))) == len(LENGTHS)
    s = result["schemes"]["window-32"]
    assert s["token_agreement"] is not None and s["bytes_per_token_layer"] < s["uncompressed_bytes_per_token_layer"]


def test_a_dataset_can_grow_a_scheme_without_touching_its_shards(work, cache_env, tmp_path):
    out = tmp_path / "grow"
    base = dict(model="kvfp-tiny", out=out, probes=str(work["suite"]), **SETTINGS)
    collect(CollectSpec(schemes=("none",), **base), show_progress=False, summary=False)
    before = {p: p.stat().st_ino for p in _shard_files(out)}
    r = collect(CollectSpec(schemes=("none", "int8-pertoken"), **base), show_progress=False, summary=False)
    assert r["units"]["done_before"] == len(LENGTHS)
    assert open_dataset(out).schemes == ["none", "int8-pertoken"]
    assert all(p.stat().st_ino == ino for p, ino in before.items())


def test_a_folder_of_another_run_is_refused_and_left_alone(work, cache_env, tmp_path):
    out = tmp_path / "other"
    collect(CollectSpec(model="kvfp-tiny", schemes=("none",), out=out, probes=str(work["suite"]), **SETTINGS),
            show_progress=False, summary=False)
    manifest = (out / "manifest.json").read_text()
    files = {p: p.read_bytes() for p in _shard_files(out)}
    changed = {**SETTINGS, "new_tokens": 7}
    with pytest.raises(KvfpError, match="settings.new_tokens: 4 there, 7 now") as e:
        collect(CollectSpec(model="kvfp-tiny", schemes=("none",), out=out, probes=str(work["suite"]), **changed),
                show_progress=False)
    assert e.value.exit_code == 2
    assert (out / "manifest.json").read_text() == manifest
    assert {p: p.read_bytes() for p in _shard_files(out)} == files


def test_a_folder_that_is_no_dataset_is_refused(work, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(KvfpError, match="not a kvfp dataset"):
        collect(CollectSpec(model="kvfp-tiny", schemes=("none",), out=out, probes=str(work["suite"])))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_stale_claims_are_taken_over_and_live_ones_respected(tmp_path):
    claims = Claims(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {"pid": sleeper.pid, "host": os.uname().nodename, "start": None}
        claims.path("a").write_text(json.dumps(live))
        assert claims.try_claim("a") is None and claims.holder("a")["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claims.holder("a") is None  # its owner is gone: stale
    got = claims.try_claim("a")
    assert got is not None and json.loads(claims.path("a").read_text())["pid"] == os.getpid()
    assert claims.try_claim("a") is None  # a second claim, even by the owner, fails while held
    got.release()
    claims.path("b").write_text("")  # a damaged claim belongs to nobody
    assert claims.try_claim("b") is not None
    claims.path("c").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "start": None}))
    assert claims.sweep() == 1 and not claims.path("c").exists() and claims.path("b").exists()


def test_a_reused_pid_does_not_keep_a_claim_alive(tmp_path):
    claims = Claims(tmp_path)
    # our own pid, but a start time that is not ours: the claim's writer was another process
    claims.path("a").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "start": "1"}))
    assert claims.try_claim("a") is not None


def test_scheme_all_expands_to_the_canonical_list_once():
    from kvfp.compressors import canonical_names

    names = [s.name for s in expand_schemes(["none", "all", "INT8-pertoken", "window-77"])]
    assert names == canonical_names() + ["window-77"]


def test_a_probe_too_long_for_the_model_is_refused_before_any_run(tiny, tmp_path):
    from kvfp.probes import Probe, ProbeSuite, tokenizer_hash

    model, tok = tiny
    n = model.config.max_position_embeddings - 2
    suite = ProbeSuite([Probe(id="long", family="plain", seed=0, n_tokens=n, ids=[tok.bos_token_id] * n)],
                       header={"tokenizer_hash": tokenizer_hash(tok)})
    path = write_suite(tmp_path / "s.jsonl", suite)
    with pytest.raises(KvfpError, match="exceeds the model's"):
        collect(CollectSpec(model="kvfp-tiny", schemes=("none",), out=tmp_path / "d", probes=str(path),
                            new_tokens=4))
    assert not (tmp_path / "d").exists()


def test_a_suite_for_another_tokenizer_is_refused(work, tmp_path):
    from kvfp.probes import read_suite

    suite = read_suite(work["suite"])
    suite.header["tokenizer_hash"] = "f" * 64
    path = write_suite(tmp_path / "s.jsonl", suite)
    with pytest.raises(KvfpError, match="another tokenizer"):
        collect(CollectSpec(model="kvfp-tiny", schemes=("none",), out=tmp_path / "d", probes=str(path)))


def test_an_unknown_suite_name_is_refused(tmp_path):
    with pytest.raises(KvfpError, match="neither a file nor a suite name") as e:
        collect(CollectSpec(model="kvfp-tiny", schemes=("none",), out=tmp_path / "d", probes="no-such-suite"))
    assert e.value.exit_code == 2
