"""Both ends of the wire for real: a `kvfp serve` process on a loopback port, `kvfp query` over HTTP
(directly and through a misbehaving proxy), then `kvfp identify` on the log it wrote."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from tests.live.servers import ROOT, fault_proxy, kvfp_serve
from tests.test_cli_fingerprint import own_cache, train_topk20

runner = CliRunner()
SERVED = "int2-pertoken"


@pytest.fixture(scope="module")
def live(tiny, heldout_ids, tmp_path_factory):
    """A classifier trained on kvfp's own collections, and a mystery endpoint serving another dtype."""
    with own_cache(tmp_path_factory, "live") as tmp:
        _, tok = tiny
        _, _, clf = train_topk20(tmp, tok, heldout_ids)
        from kvfp.probes import write_suite
        from tests.test_datasets import tiny_suite

        suite = write_suite(tmp / "probes.jsonl", tiny_suite(tok, heldout_ids, lengths=(64, 80, 96), offset=5000))
        server = kvfp_serve(tmp, "--model", "kvfp-tiny", "--scheme", SERVED, "--dtype", "bfloat16", "--hide-scheme",
                            env={"KVFP_CACHE": str(tmp / "cache")})
        yield tmp, clf, suite, server
        server.stop()


def kvfp_query(url, out, suite, *extra, env=None):
    """`kvfp query` as a user runs it: its own process, over HTTP."""
    cmd = [sys.executable, "-m", "kvfp", "query", "--url", url, "--model-name", "kvfp-tiny", "--probes", str(suite),
           "--out", str(out), "--max-tokens", "8", "--quiet", "--json", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **(env or {})})


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def identify(log, clf, suite):
    r = runner.invoke(app, ["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf),
                            "--probes", str(suite), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout[r.stdout.index("{"):])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ids", "text", "echo"])
def test_query_then_identify_names_the_served_scheme(live, mode):
    tmp, clf, suite, server = live
    log = tmp / f"log-{mode}.jsonl"
    args = ["--prompt-mode", "text", "--echo"] if mode == "echo" else ["--prompt-mode", mode]
    if mode == "ids":
        args.append("--prompt-logprobs")  # vLLM's prompt_logprobs, which kvfp serve speaks
    r = kvfp_query(server.url, log, suite, *args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["answered_now"] == 3 and summary["top_logprobs_max"] == 20
    assert summary["prompt_logprobs"] is {"ids": True, "echo": True, "text": None}[mode]
    recs = lines(log)
    from kvfp.probes import read_suite

    probes = read_suite(suite).by_id()
    assert sorted(x["kvfp"]["probe_id"] for x in recs) == sorted(probes)
    for x in recs:
        assert x["object"] == "text_completion" and x["kvfp"]["query"]["top_logprobs"] == 20
        if mode == "ids":
            assert x["kvfp"]["prompt_ids"] == probes[x["kvfp"]["probe_id"]].ids
            plp = x["choices"][0]["prompt_logprobs"]
            assert plp[0] is None and len(plp) == len(x["kvfp"]["prompt_ids"])
        elif mode == "echo":  # the ids the server's tokenizer made of the text, read back through echo
            assert x["kvfp"]["echo"] == len(x["kvfp"]["prompt_ids"])
        else:  # the tokenizer's own segmentation of the text sent, its length the server's usage count
            assert x["kvfp"]["prompt_check"] == "tokenizer-count-matches"
            assert x["usage"]["prompt_tokens"] == len(x["kvfp"]["prompt_ids"])
    # text prompts may reach the model as other ids than the probe's: the log's own ids are replayed, and
    # the suite still serves the probes whose ids match
    rep = identify(log, clf, suite)
    assert rep["tier"] == "topk-20" and rep["scored_tokens"] == 24
    assert rep["pooled"]["compressed"] and rep["pooled"]["schemes"][0][0] == SERVED
    differ = [x for x in recs if x["kvfp"]["prompt_ids"] != probes[x["kvfp"]["probe_id"]].ids]
    assert mode != "ids" or not differ
    assert sum("planted spans are not used" in n for n in rep["notes"]) == len(differ)


@pytest.mark.slow
def test_a_crashed_server_is_resumed_without_loss_or_duplicates(live):
    tmp, clf, suite, server = live
    log = tmp / "resume.jsonl"
    proxy = fault_proxy(tmp, server.url, "die-after-2")  # the mode check, then one probe: then the process dies
    try:
        r = kvfp_query(proxy.url, log, suite, "--retries", "1", "--timeout", "5")
    finally:
        proxy.stop()
    assert r.returncode == 1 and "run the same command again to resume" in r.stderr
    assert "Traceback" not in r.stderr
    first = lines(log)
    assert len(first) == 1
    with open(log, "a") as f:  # and a crash in the middle of writing a line
        f.write('{"id": "cmpl-torn", "choices": [')
    restarted = fault_proxy(tmp, server.url, "ok")  # the server back, on another port
    try:
        r = kvfp_query(restarted.url, log, suite)
    finally:
        restarted.stop()
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["answered_before"] == 1 and s["answered_now"] == 2 and s["torn_tail_bytes"] > 0
    recs = lines(log)
    assert recs[0] == first[0]  # what was written stays as it was
    assert len({x["kvfp"]["probe_id"] for x in recs}) == len(recs) == 3
    r = kvfp_query(server.url, log, suite)  # nothing left: nothing sent
    assert r.returncode == 0 and json.loads(r.stdout)["answered_now"] == 0 and len(lines(log)) == 3


@pytest.mark.slow
@pytest.mark.parametrize("mode, extra", [("429", ()), ("stall", ("--timeout", "2")),
                                         ("badjson", ("--concurrency", "2"))])
def test_transient_faults_are_retried(live, mode, extra):
    tmp, clf, suite, server = live
    log = tmp / f"retry-{mode}.jsonl"
    proxy = fault_proxy(tmp, server.url, mode)
    try:
        r = kvfp_query(proxy.url, log, suite, "--retries", "3", *extra)
    finally:
        proxy.stop()
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["answered_now"] == 3 and s["retries"] >= 1 and len(lines(log)) == 3


@pytest.mark.slow
def test_the_api_key_is_sent_and_written_nowhere(live):
    tmp, clf, suite, server = live
    log = tmp / "auth.jsonl"
    proxy = fault_proxy(tmp, server.url, "auth")
    try:
        refused = kvfp_query(proxy.url, tmp / "no-key.jsonl", suite)
        r = kvfp_query(proxy.url, log, suite, "--api-key-env", "KVFP_TEST_KEY",
                       env={"KVFP_TEST_KEY": "kvfp-test-secret"})
    finally:
        proxy.stop()
    assert refused.returncode == 1 and "401" in refused.stderr and "invalid api key" in refused.stderr
    assert r.returncode == 0, r.stderr
    assert len(lines(log)) == 3
    for text in (log.read_text(), r.stdout, r.stderr, refused.stderr):
        assert "kvfp-test-secret" not in text


@pytest.mark.slow
def test_a_server_that_caps_top_k_is_an_error_naming_the_probe(live):
    tmp, clf, suite, server = live
    log = tmp / "capped.jsonl"
    proxy = fault_proxy(tmp, server.url, "fewer-topk")
    try:
        r = kvfp_query(proxy.url, log, suite)
    finally:
        proxy.stop()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "probe " in r.stderr and "--top-logprobs 5" in r.stderr
    assert lines(log) == []


def test_query_refuses_bad_options_before_sending(tmp_path, tiny):
    r = runner.invoke(app, ["query", "--url", "ftp://x", "--model-name", "kvfp-tiny", "--out", str(tmp_path / "l")])
    assert r.exit_code == 2 and "http" in r.output
    r = runner.invoke(app, ["query", "--url", "http://127.0.0.1:9", "--model-name", "kvfp-tiny",
                            "--out", str(tmp_path / "l"), "--api-key-env", "KVFP_TEST_UNSET_KEY"])
    assert r.exit_code == 2 and "KVFP_TEST_UNSET_KEY" in r.output
    r = runner.invoke(app, ["query", "--url", "http://127.0.0.1:9", "--model-name", "kvfp-tiny",
                            "--out", str(tmp_path), "--probes", "quick"])
    assert r.exit_code == 2 and "folder" in r.output
