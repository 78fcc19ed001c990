"""Each log format on the hand-written samples in ``samples/``: nulls, ``k + 1`` entries, unsorted
and colliding top-k, chat bytes, vLLM prompt logprobs, ``n > 1`` choices, prompts from a suite.

The samples spell tokens as kvfp-tiny's tokenizer decodes them; which ids those are is looked up
at test time (``one``), never written into the test.
"""

from pathlib import Path

import numpy as np
import pytest

from kvfp.errors import KvfpError
from kvfp.fingerprint.readers import FORMATS, load_observations, read_log
from kvfp.fingerprint.readers.tokens import token_table
from kvfp.probes import read_suite

SAMPLES = Path(__file__).parent / "samples"
NIHON = "\u65e5"  # 日: three bytes, each a token of its own in kvfp-tiny, each decoding to "\ufffd"


def one(tok, s: str) -> int:
    """The one id ``s`` is in kvfp-tiny's tokenizer (the samples rely on it)."""
    ids = tok.encode(s, add_special_tokens=False)
    assert len(ids) == 1 and tok.decode(ids) == s, f"sample assumption broken: {s!r} is {ids} in this tokenizer"
    return ids[0]


def nihon(tok) -> list[int]:
    ids = tok.encode(NIHON, add_special_tokens=False)
    assert len(ids) == 3 and all(tok.decode([i]) == "\ufffd" for i in ids), \
        f"sample assumption broken: {NIHON!r} is {ids} in this tokenizer; rewrite the samples"
    return ids


def test_completions(tok, suite):
    obs = read_log(SAMPLES / "completions.jsonl", tok, suite=suite)
    assert [(o.meta["line"], o.meta["choice"]) for o in obs] == [(1, 0), (3, 0), (3, 1), (4, 0), (5, 0)]  # 2 blank
    assert all(o.source == "openai-completions" for o in obs)
    the, of, and_, dot, comma = (one(tok, s) for s in (" the", " of", " and", ".", ","))
    n1, n2, n3 = nihon(tok)

    a = obs[0]
    # "\ufffd" x3 resolved by the text, in the tokens and in the top-k (logprob equal to the chosen one)
    assert a.output_ids == [the, n1, n2, n3, of]
    assert a.token_logprobs == [-0.1, -0.2, -0.3, -0.4, -0.5]
    assert a.topk_ids == [[the, of], [n1, and_], [n2, comma], [n3, dot], [of, the]]
    assert a.topk_logprobs[3] == [-0.4, -1.0]  # the file listed them the other way round
    assert a.prompt_ids == [0, 341, 476] and a.probe_id is None
    assert a.prompt_logprobs == [None, -3.25, -0.75]  # vLLM entries inside the choice, keyed by id
    assert any("steps 1, 2, 3" in n and "admits one id sequence" in n for n in a.notes)
    assert any("keyed by a token string several ids share" in n for n in a.notes)

    b, c = obs[1], obs[2]
    assert b.prompt_ids == c.prompt_ids == suite.by_id()["plain-s0"].ids  # from kvfp.probe_id
    assert b.probe_id == c.probe_id == "plain-s0"
    assert b.output_ids == [the, of, dot] and c.output_ids == [and_, comma, the]
    # step 1 listed three entries: k=2 plus the chosen " of" beyond them, dropped
    # the "\ufffd" entry is not the chosen token and names no single id: it still ranks second (so " of"
    # stays beyond the top-2), then is left out rather than given a guessed id: a partial list
    assert [len(r) for r in b.topk_ids] == [2, 1, 2] and b.meta["topk_plus_chosen"]
    assert b.topk_logprobs[1] == [-0.2] and b.topk_ids[1] == [the]
    assert b.meta["topk_partial"] and b.meta["topk_k"] == 2
    assert any("at step 1" in n and "left out" in n for n in b.notes)
    assert b.topk_ids[0] == [the, of] and b.topk_logprobs[0] == [-0.3, -1.9]  # sorted
    assert c.topk_ids == [[and_, the], [comma, dot], [the, and_]] and not c.notes

    d = obs[3]  # logprobs: null: the tokens tier from the text
    assert d.output_ids == tok.encode("hello world", add_special_tokens=False)
    assert d.token_logprobs is None and d.topk_ids is None and d.tiers() == ["tokens"]
    assert any("segmentation of the generated text" in n for n in d.notes)

    e = obs[4]
    assert e.output_ids == [n1, n2, n3]
    replacement = token_table(tok).lookup_string("\ufffd")
    # step 0: the server's dict kept one of two "\ufffd" entries: one entry short of k, accepted and noted
    assert e.topk_ids[0] == [n1] and e.topk_logprobs[0] == [-0.9]
    # step 1: a duplicated key survives parsing: the chosen token, and a second "\ufffd" that names no single
    # id (any of the other ids in the replacement set): left out, not guessed
    assert len(replacement) > 2 and e.topk_ids[1] == [n2]
    assert e.topk_ids[2] == [n3, comma]
    assert any("at steps 0, 1, 2: keyed by a token string several ids share" in n for n in e.notes)
    assert any("at step 1" in n and "left out" in n for n in e.notes)


def test_chat(tok, suite):
    obs = read_log(SAMPLES / "chat.jsonl", tok, suite=suite)
    assert [o.source for o in obs] == ["openai-chat"] * 3
    the, of, and_, dot, comma = (one(tok, s) for s in (" the", " of", " and", ".", ","))
    n1, n2, n3 = nihon(tok)
    e2 = token_table(tok).lookup_bytes(b"\xe2")
    a = obs[0]
    assert a.output_ids == [the, n1, n2, n3]  # from bytes: nothing ambiguous, nothing noted
    assert a.notes == []
    assert a.topk_ids == [[the, of], [n1, and_], [n2, *e2], [n3, dot]]  # " and" had bytes: null
    assert a.topk_logprobs[0] == [-0.25, -2.0] and a.topk_logprobs[3] == [-0.0625, -4.0]
    assert a.prompt_logprobs == [None, -2.5, -0.25, -1.75]  # top level for chat
    assert a.probe_id == "plain-s0" and a.tiers() == ["prompt", "tokens"]  # k=2 is below topk-5

    b = obs[1]  # no bytes anywhere: strings
    assert b.output_ids == [of, the] and b.topk_ids == [[of, the], [the, comma]]
    assert b.prompt_ids == [0, 2233] and b.prompt_logprobs is None

    c = obs[2]
    assert c.output_ids == tok.encode("hello world", add_special_tokens=False) and c.topk_ids is None


def test_kvfp_jsonl(tok, suite):
    obs = read_log(SAMPLES / "kvfp.jsonl", tok, suite=suite)
    a, b = obs
    assert a.source == "kvfp-jsonl" and a.notes == []
    assert a.output_ids == [341, 14, 16] and a.prompt_ids == [0, 341, 476, 454]
    assert a.prompt_logprobs == [None, -3.5, -2.25, -1.0]
    assert a.probe_id == "plain-s0" and a.meta["scheme"] == "none" and a.meta["mode"] == "generate"
    assert b.topk_ids == [[5010, 476]] and b.topk_logprobs == [[-0.25, -3.0]]  # sorted
    assert b.probe_id == "short-s1" and b.meta["scheme"] == "h2o-256"


def test_text(tok, suite):
    a, b = read_log(SAMPLES / "text.jsonl", tok, suite=suite)
    assert a.source == "text" and a.prompt_ids == suite.by_id()["plain-s0"].ids
    assert a.output_ids == tok.encode(" the of", add_special_tokens=False)
    assert b.output_ids == tok.encode("hello world" + NIHON, add_special_tokens=False)
    assert b.meta["kvfp"] == {"scheme": "snapkv-512"}  # what else the kvfp object carried
    assert all(any("a guess" in n for n in o.notes) for o in (a, b))


@pytest.mark.parametrize("name, fmt", [("completions", "openai-completions"), ("chat", "openai-chat"),
                                       ("kvfp", "kvfp-jsonl"), ("text", "text")])
def test_auto_detection_matches_the_named_format(tok, suite, name, fmt):
    auto = read_log(SAMPLES / f"{name}.jsonl", tok, suite=suite)
    named = read_log(SAMPLES / f"{name}.jsonl", tok, format=fmt, suite=suite)
    assert [o.source for o in auto] == [fmt] * len(auto)
    assert [(o.output_ids, o.topk_ids) for o in auto] == [(o.output_ids, o.topk_ids) for o in named]


def test_a_named_format_that_does_not_fit_is_refused(tok, suite):
    with pytest.raises(KvfpError, match=r"chat.jsonl:1: this line is openai-chat but openai-completions was "
                                        r"asked for"):
        read_log(SAMPLES / "chat.jsonl", tok, format="openai-completions", suite=suite)


def test_unknown_format_name(tok):
    with pytest.raises(KvfpError, match="unknown log format 'jsonl'") as e:
        read_log(SAMPLES / "chat.jsonl", tok, format="jsonl")
    assert e.value.exit_code == 2
    assert set(FORMATS) == {"kvfp-jsonl", "openai-completions", "openai-chat", "text"}


def test_probe_ids_need_a_suite(tok):
    with pytest.raises(KvfpError, match=r"text.jsonl:1: no prompt: kvfp.probe_id 'plain-s0' needs the probe suite "
                                        r"it comes from; pass --probes SUITE or include kvfp.prompt_ids"):
        read_log(SAMPLES / "text.jsonl", tok)


def test_load_observations_takes_a_suite_file(tok):
    obs = load_observations(SAMPLES / "text.jsonl", tok, suite=SAMPLES / "probes.jsonl")
    assert obs[0].prompt_ids == read_suite(SAMPLES / "probes.jsonl").by_id()["plain-s0"].ids
    with pytest.raises(KvfpError, match="probe suite .*nope.jsonl not found"):
        load_observations(SAMPLES / "text.jsonl", tok, suite=SAMPLES / "nope.jsonl")


def test_a_log_from_another_tokenizer(tok):
    table = token_table(tok)
    for s in (" California", " Massachusetts", " unbelievable", " Washington", " Pennsylvania", " remarkable"):
        assert not table.lookup_string(s), f"sample assumption broken: {s!r} is a kvfp-tiny token"
    with pytest.raises(KvfpError) as e:
        read_log(SAMPLES / "other_tokenizer.jsonl", tok)
    msg = str(e.value)
    assert msg.startswith(f"{SAMPLES / 'other_tokenizer.jsonl'}:1: choices[0].logprobs.tokens[0]: token ' California' "
                          f"is not in the tokenizer's vocabulary")
    assert "9 of the 9 tokens on this line are not: this log was probably produced by another tokenizer" in msg


def test_observations_restrict_like_collected_ones(tok, suite):
    a = read_log(SAMPLES / "chat.jsonl", tok, suite=suite)[0]
    p = a.restrict("prompt")
    assert p.prompt_logprobs == a.prompt_logprobs and p.topk_ids is None
    assert np.array_equal(a.restrict("tokens").output_ids, a.output_ids)
