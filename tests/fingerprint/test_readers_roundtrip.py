"""Real kvfp-tiny traces written as endpoint logs (token strings from ``decode([id])``, chat bytes
from the token table) and read back: ids → strings → ids on real text.

One trace is generated greedily from held-out text; the other replays a continuation with
multi-byte characters, whose byte tokens all decode to ``"\\ufffd"``, so the reader must recover
them from the generated text (completions) or the bytes (chat).
"""

import json

import numpy as np
import pytest

from kvfp.compressors import parse_scheme
from kvfp.fingerprint.observation import from_trace
from kvfp.fingerprint.readers import read_log
from kvfp.fingerprint.readers.tokens import token_table
from kvfp.models.corpus import probe_text
from kvfp.runner import generate, replay

K = 5


@pytest.fixture(scope="module")
def traces(tiny):
    model, tok = tiny
    prompt = tok.encode(probe_text(4000))[:80]
    scheme = parse_scheme("none")
    made = generate(model, scheme, [prompt], 12, topk=K, logits=True)[0]
    cont = tok.encode(" the 日本語 € é", add_special_tokens=False)
    forced = replay(model, scheme, [prompt], [cont], topk=K)[0]
    assert sum(tok.decode([i]) == "\ufffd" for i in cont) >= 6  # the case this file exists for
    return made, forced


def _block(tr):
    return {"prompt_ids": list(tr.prompt_ids), "probe_id": "heldout-0"}


def _vllm_prompt_logprobs(tr, table):
    return [None] + [{str(i): {"logprob": lp, "rank": 1, "decoded_token": table.strings[i]}}
                     for i, lp in zip(tr.prompt_ids[1:], tr.prompt_logprobs[1:])]


def completions_line(tr, tok) -> dict:
    table = token_table(tok)
    top = []
    for ids, lps in zip(tr.topk_ids, tr.topk_logprobs):
        row = {}
        for i, lp in zip(ids, lps):
            row.setdefault(table.strings[i], lp)  # a server's dict keeps one id per string
        top.append(row)
    choice = {"index": 0, "text": tok.decode(tr.output_ids), "finish_reason": "length",
              "logprobs": {"tokens": [table.strings[i] for i in tr.output_ids], "token_logprobs": tr.token_logprobs,
                           "top_logprobs": top},
              "prompt_logprobs": _vllm_prompt_logprobs(tr, table)}
    return {"id": "cmpl-x", "object": "text_completion", "model": "kvfp-tiny", "choices": [choice],
            "kvfp": _block(tr)}


def chat_line(tr, tok) -> dict:
    table = token_table(tok)

    def entry(i, lp):
        return {"token": table.strings[i], "logprob": lp, "bytes": list(table.id_bytes[i])}

    content = [{**entry(i, lp), "top_logprobs": [entry(j, q) for j, q in zip(ids, lps)]}
               for i, lp, ids, lps in zip(tr.output_ids, tr.token_logprobs, tr.topk_ids, tr.topk_logprobs)]
    return {"id": "chatcmpl-x", "object": "chat.completion", "model": "kvfp-tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": tok.decode(tr.output_ids)},
                         "logprobs": {"content": content}}],
            "prompt_logprobs": _vllm_prompt_logprobs(tr, table), "kvfp": _block(tr)}


def kvfp_line(tr) -> dict:
    rec = tr.to_record()
    if tr.logits is not None:
        rec["logits"] = tr.logits.tolist()
    return rec


def write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    return path


def test_kvfp_jsonl_round_trip_is_exact(tmp_path, tiny, traces):
    _, tok = tiny
    obs = read_log(write(tmp_path, "k.jsonl", [kvfp_line(tr) for tr in traces]), tok)
    for o, tr in zip(obs, traces):
        ref = from_trace(tr)
        assert o.output_ids == ref.output_ids and o.prompt_ids == ref.prompt_ids
        assert o.token_logprobs == ref.token_logprobs
        assert o.topk_ids == ref.topk_ids and o.topk_logprobs == ref.topk_logprobs
        assert o.prompt_logprobs == ref.prompt_logprobs and o.notes == []
    assert np.array_equal(obs[0].logits, traces[0].logits) and obs[0].logits.dtype == np.float32
    assert obs[1].logits is None and obs[1].meta["mode"] == "replay"


def test_chat_round_trip_is_exact(tmp_path, tiny, traces):
    _, tok = tiny
    obs = read_log(write(tmp_path, "c.jsonl", [chat_line(tr, tok) for tr in traces]), tok)
    for o, tr in zip(obs, traces):
        assert o.output_ids == tr.output_ids and o.token_logprobs == tr.token_logprobs
        assert o.topk_ids == tr.topk_ids and o.topk_logprobs == tr.topk_logprobs
        assert o.prompt_logprobs == tr.prompt_logprobs
        assert o.notes == []  # bytes leave nothing ambiguous


def test_completions_round_trip(tmp_path, tiny, traces):
    _, tok = tiny
    table = token_table(tok)
    obs = read_log(write(tmp_path, "o.jsonl", [completions_line(tr, tok) for tr in traces]), tok)
    for o, tr in zip(obs, traces):
        # the generated text pins every "\ufffd" token down
        assert o.output_ids == tr.output_ids
        assert o.token_logprobs == tr.token_logprobs and o.prompt_logprobs == tr.prompt_logprobs
        ambiguous = [t for t, i in enumerate(tr.output_ids) if len(table.lookup_string(table.strings[i])) > 1]
        if ambiguous:
            assert any("admits one id sequence" in n for n in o.notes)
        for t, (ids, lps) in enumerate(zip(tr.topk_ids, tr.topk_logprobs)):
            names = [table.strings[i] for i in ids]
            if all(len(table.lookup_string(s)) == 1 for s in names):
                assert o.topk_ids[t] == ids and o.topk_logprobs[t] == lps
            else:
                # ids sharing a string were merged; the rest are exact, the chosen token is recognised
                exact = [i for i in ids if len(table.lookup_string(table.strings[i])) == 1]
                assert set(exact) <= set(o.topk_ids[t])
                if tr.output_ids[t] in ids:
                    assert tr.output_ids[t] in o.topk_ids[t]
                assert any(f"step {t}" in n or f"steps {t}" in n or f", {t}" in n for n in o.notes)
    assert any(len(table.lookup_string(table.strings[i])) > 1 for i in traces[1].output_ids)
