"""``kvfp export``: traces written in endpoint log shapes read back to the same ids and logprobs."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.collect import CollectSpec, collect
from kvfp.datasets import export_dataset, open_dataset
from kvfp.errors import KvfpError
from kvfp.fingerprint.readers import read_log
from kvfp.probes import write_suite
from kvfp.runner.trace import Trace
from tests.test_datasets import assert_same_traces, tiny_suite

runner = CliRunner()
SCHEMES = ("none", "int4-pertoken")


@pytest.fixture(scope="module")
def ds(tiny, heldout_ids, tmp_path_factory):
    _, tok = tiny
    root = tmp_path_factory.mktemp("export")
    # offset into the stream where the text holds non-ASCII and multi-token words
    suite = write_suite(root / "suite.jsonl", tiny_suite(tok, heldout_ids, lengths=(48, 56), offset=2000))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(root / "cache"))
        collect(CollectSpec(model="kvfp-tiny", schemes=SCHEMES, out=root / "data", probes=str(suite),
                            new_tokens=6, topk=8, logits=True), show_progress=False, summary=False)
    return open_dataset(root / "data")


def _export(ds, tmp_path, fmt, *extra) -> list[dict]:
    out = tmp_path / f"{fmt}.jsonl"
    r = runner.invoke(app, ["export", str(ds.path), "--format", fmt, "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_kvfp_jsonl_round_trips_exactly(ds, tmp_path):
    recs = _export(ds, tmp_path, "kvfp-jsonl")
    traces = list(ds.traces())
    assert len(recs) == len(traces) == 4
    back = [Trace.from_record({k: v for k, v in r.items() if k not in ("logits", "kvfp")},
                              np.asarray(r["logits"], dtype=np.float32)) for r in recs]
    assert_same_traces(back, traces)
    for r, tr in zip(recs, traces):
        assert r["kvfp"] == {"probe_id": tr.meta["probe"]["id"], "prompt_ids": tr.prompt_ids,
                             "suite_hash": ds.probes.hash}
        assert r["format"] == 1 and r["scheme"] == tr.meta["scheme"] and r["prompt_logprobs"][0] is None


def test_kvfp_jsonl_reads_back_through_the_log_reader(ds, tmp_path, tiny):
    _, tok = tiny
    _export(ds, tmp_path, "kvfp-jsonl")
    obs = read_log(tmp_path / "kvfp-jsonl.jsonl", tok)
    for o, tr in zip(obs, ds.traces()):
        assert o.output_ids == tr.output_ids and o.token_logprobs == tr.token_logprobs
        assert o.topk_ids == tr.topk_ids and o.topk_logprobs == tr.topk_logprobs
        assert o.prompt_logprobs == tr.prompt_logprobs and np.array_equal(o.logits, tr.logits)


def test_openai_completions_shape_and_strings(ds, tmp_path, tiny):
    _, tok = tiny
    recs = _export(ds, tmp_path, "openai-completions", "--with-prompt-logprobs", "-s", "int4-pertoken")
    traces = list(ds.traces("int4-pertoken"))
    assert len(recs) == len(traces)
    for r, tr in zip(recs, traces):
        assert set(r) == {"id", "object", "model", "choices", "kvfp"} and r["object"] == "text_completion"
        assert r["model"] == "kvfp-tiny" and r["id"].startswith("cmpl-")
        (c,) = r["choices"]
        assert set(c) == {"index", "text", "finish_reason", "logprobs", "prompt_logprobs"}
        lp = c["logprobs"]
        assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        # each string is the token decoded alone; together they spell the text
        assert lp["tokens"] == [tok.decode([i]) for i in tr.output_ids]
        assert c["text"] == tok.decode(tr.output_ids)
        assert lp["token_logprobs"] == tr.token_logprobs
        assert lp["text_offset"] == list(np.cumsum([0] + [len(s) for s in lp["tokens"]])[:-1])
        for row, ids, lps in zip(lp["top_logprobs"], tr.topk_ids, tr.topk_logprobs):
            assert row[tok.decode([ids[0]])] == lps[0] and len(row) <= len(ids)
        pl = c["prompt_logprobs"]
        assert pl[0] is None and len(pl) == len(tr.prompt_ids)
        for pos in range(1, len(pl)):
            (key, entry), = pl[pos].items()
            assert int(key) == tr.prompt_ids[pos] and entry["logprob"] == tr.prompt_logprobs[pos]
            assert entry["decoded_token"] == tok.decode([tr.prompt_ids[pos]])


def test_openai_chat_bytes_spell_the_tokens(ds, tmp_path, tiny):
    _, tok = tiny
    recs = _export(ds, tmp_path, "openai-chat", "--with-prompt-logprobs")
    vocab_bytes = {}
    for r, tr in zip(recs, ds.traces()):
        assert set(r) == {"id", "object", "model", "choices", "prompt_logprobs", "kvfp"}
        assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
        (c,) = r["choices"]
        assert c["message"] == {"role": "assistant", "content": tok.decode(tr.output_ids)}
        content = c["logprobs"]["content"]
        assert [e["token"] for e in content] == [tok.decode([i]) for i in tr.output_ids]
        assert [e["logprob"] for e in content] == tr.token_logprobs
        # the bytes of all tokens, end to end, are the UTF-8 of the decoded text
        assert bytes(b for e in content for b in e["bytes"]).decode("utf-8") == c["message"]["content"]
        for e, ids, lps in zip(content, tr.topk_ids, tr.topk_logprobs):
            assert [t["logprob"] for t in e["top_logprobs"]] == lps
            for t, i in zip(e["top_logprobs"], ids):
                # the tokenizer's own decoder agrees with the bytes (replacing half characters)
                assert bytes(t["bytes"]).decode("utf-8", "replace") == tok.decode([i]) == t["token"]
                vocab_bytes.setdefault(bytes(t["bytes"]), set()).add(i)
        assert r["prompt_logprobs"][0] is None and len(r["prompt_logprobs"]) == len(tr.prompt_ids)
    assert all(len(ids) == 1 for ids in vocab_bytes.values()), "two ids exported with the same bytes"


@pytest.mark.parametrize("fmt", ["openai-completions", "openai-chat"])
def test_openai_shapes_read_back_to_the_same_ids(ds, tmp_path, tiny, fmt):
    _, tok = tiny
    _export(ds, tmp_path, fmt, "--with-prompt-logprobs")
    obs = read_log(tmp_path / f"{fmt}.jsonl", tok, suite=ds.probes)
    for o, tr in zip(obs, ds.traces()):
        assert o.prompt_ids == tr.prompt_ids and o.output_ids == tr.output_ids
        assert o.token_logprobs == tr.token_logprobs and o.prompt_logprobs == tr.prompt_logprobs
        assert o.probe_id == tr.meta["probe"]["id"]


def test_export_never_overwrites_and_names_bad_input(ds, tmp_path):
    out = tmp_path / "log.jsonl"
    out.write_text("mine\n")
    r = runner.invoke(app, ["export", str(ds.path), "--format", "kvfp-jsonl", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and out.read_text() == "mine\n"
    r = runner.invoke(app, ["export", str(ds.path), "--format", "openai", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "openai-chat" in r.output
    r = runner.invoke(app, ["export", str(tmp_path), "--format", "kvfp-jsonl", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "manifest.json is missing" in r.output
    r = runner.invoke(app, ["export", str(ds.path), "--format", "kvfp-jsonl", "-s", "int8-pertoken",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no scheme 'int8-pertoken'" in r.output
    assert not (tmp_path / "x").exists()


def test_prompt_logprobs_asked_of_a_dataset_without_them(ds, tmp_path, tiny):
    _, tok = tiny
    trace = next(ds.traces())
    trace.prompt_logprobs = None

    class OneTrace:
        path, manifest, schemes = ds.path, ds.manifest, ["none"]

        def traces(self, scheme):
            yield trace

    with pytest.raises(KvfpError, match="no prompt logprobs"):
        export_dataset(OneTrace(), "openai-chat", tmp_path / "o.jsonl", with_prompt_logprobs=True, tokenizer=tok)
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".tmp-*"))
