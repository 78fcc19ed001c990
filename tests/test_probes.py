"""The probe generator: determinism, exact lengths, and planted structure where the metadata says."""

import random

import pytest

from kvfp.errors import KvfpError, UnknownNameError
from kvfp.probes import FAMILIES, default_lengths, generate_suite, read_suite, tokenizer_hash, write_suite
from kvfp.probes.filler import Filler, encode
from kvfp.probes.layout import SNAP_TOKENS, BuildContext
from kvfp.probes.model_tokenizer import load_tokenizer
from kvfp.probes.suites import MIN_LENGTH, STANDARD_LENGTHS


@pytest.fixture(scope="module")
def tok_max():
    return load_tokenizer("kvfp-tiny")


@pytest.fixture(scope="module")
def tok(tok_max):
    return tok_max[0]


@pytest.fixture(scope="module")
def suite(tok_max):
    tok, model_max = tok_max
    return generate_suite(tok, "default", seed=0, model_max=model_max, model_name="kvfp-tiny")


def by_family(suite, family):
    probes = [p for p in suite.probes if p.family == family]
    assert probes, f"no {family} probe in the suite"
    return probes


def span_ids(p, name):
    a, b = p.spans[name]
    return p.ids[a:b]


# ---- determinism, sizes, lengths ---------------------------------------------------------------

def test_same_seed_same_suite_other_seed_other_probes(tok_max, suite):
    tok, model_max = tok_max
    again = generate_suite(tok, "default", seed=0, model_max=model_max, model_name="kvfp-tiny")
    assert again.hash == suite.hash
    assert [p.to_record() for p in again.probes] == [p.to_record() for p in suite.probes]
    other = generate_suite(tok, "default", seed=1, model_max=model_max)
    assert other.hash != suite.hash
    # Every probe changes with the seed, not just some of them.
    for a, b in zip(suite.probes, other.probes):
        assert a.id.removesuffix("-s0") == b.id.removesuffix("-s1")
        assert a.ids != b.ids, a.id


def test_every_probe_has_exactly_its_length_in_tokenizer_ids(tok, suite):
    bos = tok("a", add_special_tokens=True)["input_ids"][:1]
    assert bos == [tok.bos_token_id]  # kvfp-tiny prepends BOS; probes must count it
    for p in suite.probes:
        assert len(p.ids) == p.n_tokens, p.id
        assert p.ids[:1] == bos and tok.bos_token_id not in p.ids[1:], p.id
        assert all(0 <= i < len(tok) for i in p.ids), p.id
        assert f"-{p.n_tokens}-" in p.id, p.id


def test_default_lengths_follow_the_model_maximum(tok_max, suite):
    _, model_max = tok_max
    want = [n for n in STANDARD_LENGTHS if 2 * n <= model_max]
    assert suite.header["lengths"] == want
    long = {p.n_tokens for p in suite.probes if p.family != "short"}
    assert sorted(long) == want
    assert max(want) * 2 <= model_max < max(want) * 4
    assert default_lengths(131072)[-1] == 32768 and 65536 not in default_lengths(131072)
    assert default_lengths(8192)[-1] == 4096


def test_default_suite_covers_every_family_at_a_collectable_size(suite):
    assert {p.family for p in suite.probes} == set(FAMILIES)
    assert 20 <= len(suite) <= 30
    assert len({p.id for p in suite.probes}) == len(suite)


def test_quick_suite_is_small_and_short(tok):
    quick = generate_suite(tok, "quick", seed=3)
    assert len(quick) <= 8 and max(p.n_tokens for p in quick.probes) <= 512
    assert {p.family for p in quick.probes} == set(FAMILIES)


def test_lengths_override_and_refusals(tok_max):
    tok, model_max = tok_max
    s = generate_suite(tok, "quick", lengths=[1024], model_max=model_max)
    assert {p.n_tokens for p in s.probes if p.family != "short"} == {1024}
    s = generate_suite(tok, "default", lengths=[MIN_LENGTH], model_max=model_max)  # the smallest still fits
    assert {p.n_tokens for p in s.probes if p.family != "short"} == {MIN_LENGTH}
    with pytest.raises(KvfpError, match="exceeds the model's maximum"):
        generate_suite(tok, "quick", lengths=[512, 2 * model_max], model_max=model_max)
    with pytest.raises(KvfpError, match="minimum"):
        generate_suite(tok, "quick", lengths=[64])
    with pytest.raises(UnknownNameError, match="default, quick"):
        generate_suite(tok, "everything")
    with pytest.raises(KvfpError, match="characters"):
        generate_suite(tok, "quick", corpus="too short")


def test_long_probes_for_real_models(tok):
    """32k-token probes are exact too (the tokenizer need not be the real model's to check that)."""
    ctx = BuildContext(tok, Filler(tok, _corpus_text()))
    b = FAMILIES["needle"](ctx, 32768, random.Random(0), depth=0.25)
    assert len(b.ids) == 32768 and b.ids[b.spans["needle"][0]:b.spans["needle"][1]] == b.answer_ids


# ---- each family's planted structure ----------------------------------------------------------

def test_needle_value_sits_at_its_span_and_depth(tok, suite):
    for p in by_family(suite, "needle"):
        assert span_ids(p, "needle") == p.answer_ids == encode(tok, p.params["value"])
        line_start = p.spans["needle_line"][0]
        assert abs(line_start - round(p.params["depth"] * p.n_tokens)) <= SNAP_TOKENS
        a, b = p.spans["needle"]
        assert p.spans["needle_line"][0] < a < b < p.spans["needle_line"][1]
        assert p.spans["question"][1] == p.n_tokens
        assert p.params["key"] in tok.decode(span_ids(p, "question"))
        assert p.params["key"] in tok.decode(span_ids(p, "needle_line"))
        assert p.params["distance"] == p.n_tokens - a
    assert {p.params["depth"] for p in by_family(suite, "needle")} == {0.1, 0.5, 0.9}


def test_recall_keys_are_planted_and_one_is_asked(tok, suite):
    for p in by_family(suite, "recall"):
        n, t = p.params["n_keys"], p.params["target"]
        starts = [p.spans[f"key{i}"][0] for i in range(n)]
        assert starts == sorted(starts) and len(set(starts)) == n
        for i in range(n):
            assert span_ids(p, f"key{i}") == encode(tok, p.params["values"][i])
        assert p.spans["target"] == p.spans[f"key{t}"]
        assert p.answer_ids == span_ids(p, "target")
        assert p.params["keys"][t] in tok.decode(span_ids(p, "question"))
        assert p.spans["question"][1] == p.n_tokens and starts[-1] < p.spans["question"][0]


def test_copy_repeats_its_span_at_the_stated_distance(suite):
    for p in by_family(suite, "copy"):
        c0, rest, c1 = p.spans["copy0"], p.spans["copy0_rest"], p.spans["copy1"]
        assert span_ids(p, "copy0") == span_ids(p, "copy1") and c0[1] > c0[0]
        assert c0[1] == rest[0] and span_ids(p, "copy0_rest") == p.answer_ids
        assert c1[1] == p.n_tokens and rest[1] <= c1[0]
        assert p.params["distance"] == c1[0] - c0[0]
        assert p.params["repeated"] == c0[1] - c0[0] and p.params["span"] == rest[1] - c0[0]
        if p.n_tokens >= 1024:
            assert p.params["distance"] > 512  # beyond the catalogue's 512-token windows


def test_outlier_spans_hold_what_params_say(tok, suite):
    special = set(tok.all_special_ids)
    for p in by_family(suite, "outlier"):
        assert span_ids(p, "digits") == encode(tok, p.params["digits"]) and p.params["digits"].isdigit()
        assert len(p.params["digits"]) >= 32
        assert span_ids(p, "unicode") == encode(tok, p.params["unicode"])
        assert not p.params["unicode"].isascii()
        assert span_ids(p, "rare") == p.params["rare_ids"] and not special & set(p.params["rare_ids"])
        order = sorted(p.params["depths"], key=p.params["depths"].get)
        assert sorted(order, key=lambda k: p.spans[k][0]) == order


def test_rare_ids_are_rarer_than_filler(tok):
    filler = Filler(tok, _corpus_text())
    counts = filler.token_counts
    rare = filler.rare_ids(16, random.Random(0))
    typical = sorted(counts.values())[len(counts) // 2]
    assert max(counts[i] for i in rare) < typical


def test_distractors_are_near_identical_and_one_is_asked(tok, suite):
    for p in by_family(suite, "distractor"):
        keys, vals, t = p.params["keys"], p.params["values"], p.params["target"]
        assert len(set(keys)) == len(keys) == p.params["n_lines"] and len(set(vals)) == len(vals)
        assert len({v[:4] for v in vals}) == 1
        digits = [k.rsplit("_", 1)[1] for k in keys]
        for d in digits:
            assert any(_one_edit(d, e) for e in digits if e != d), d
        assert span_ids(p, "target") == p.answer_ids == encode(tok, vals[t])
        b0, b1 = p.spans["block"]
        assert b0 <= p.spans["target_line"][0] < p.spans["target"][0] < p.spans["target_line"][1] <= b1
        block = tok.decode(span_ids(p, "block"))
        assert all(f'{k} = "{v}"' in block for k, v in zip(keys, vals))
        assert keys[t] in tok.decode(span_ids(p, "question")) and p.spans["question"][1] == p.n_tokens


def test_plain_and_short_are_corpus_text(tok, suite):
    for p in by_family(suite, "plain") + by_family(suite, "short"):
        assert p.spans["text"] == [1, p.n_tokens] and p.answer_ids == []


def test_short_probes_fit_every_fixed_window_of_the_catalogue(suite):
    from kvfp.compressors.registry import canonical_schemes

    windows = [s.gene.params.get("sinks", 0) + s.gene.params["window"] for s in canonical_schemes()
               if s.gene.importance in ("recency", "position") and "window" in s.gene.params]
    assert windows, "the catalogue has no fixed-window scheme to compare with"
    for p in by_family(suite, "short"):
        assert p.n_tokens + p.params["generation_room"] <= min(windows), p.id
        assert p.params["generation_room"] >= 32


def test_filler_comes_from_the_corpus_argument(tok):
    lines = [f"record_{i:05d} = compute({i}, {i * 7 % 13})\n" for i in range(3000)]
    corpus = "".join(lines)
    s = generate_suite(tok, "quick", seed=2, corpus=corpus, corpus_name="synthetic")
    plain = by_family(s, "plain")[0]
    assert tok.decode(plain.ids[1:]) in corpus + "\n\n" + corpus
    assert s.header["corpus"]["name"] == "synthetic" and s.header["corpus"]["chars"] == len(corpus)
    needle = by_family(s, "needle")[0]
    assert tok.decode(span_ids(needle, "needle")) == needle.params["value"]


# ---- file and identity ------------------------------------------------------------------------

def test_write_read_round_trip_keeps_probes_and_header(tmp_path, tok, suite):
    path = write_suite(tmp_path / "probes.jsonl", suite)
    back = read_suite(path)
    assert back.hash == suite.hash
    assert [p.to_record() for p in back.probes] == [p.to_record() for p in suite.probes]
    h = back.header
    assert h["suite"] == "default" and h["seed"] == 0 and h["model"] == "kvfp-tiny"
    assert h["tokenizer_hash"] == tokenizer_hash(tok) and h["generator_version"] >= 1
    assert h["prefix_ids"] == [tok.bos_token_id]
    with pytest.raises(KvfpError, match="already exists"):
        write_suite(path, suite)


def test_tokenizer_hash_tells_tokenizers_apart(tok):
    from transformers import AutoTokenizer

    from kvfp.models.loading import resolve

    same = AutoTokenizer.from_pretrained(resolve("kvfp-tiny")[0])
    assert tokenizer_hash(same) == tokenizer_hash(tok)
    assert len(tokenizer_hash(tok)) == 64
    same.add_tokens(["<|kvfp-test-token|>"])
    assert tokenizer_hash(same) != tokenizer_hash(tok)


def _one_edit(a: str, b: str) -> bool:
    """One digit changed, or two digits swapped."""
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return len(diff) == 1 or (len(diff) == 2 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])


def _corpus_text():
    from kvfp.probes.suites import _default_corpus

    return _default_corpus()
