"""Token strings and bytes back to ids (kvfp-tiny's byte-level BPE), and the choice among the ids
an ambiguous string stands for. Expectations come from the tokenizer at test time."""

import pytest
from tokenizers import pre_tokenizers

from kvfp.errors import KvfpError
from kvfp.fingerprint.readers.fields import Line
from kvfp.fingerprint.readers.resolve import resolve_chosen
from kvfp.fingerprint.readers.tokens import Mapper, bytes_to_unicode, token_table


@pytest.fixture(scope="module")
def table(tok):
    return token_table(tok)


def test_byte_alphabet_is_the_tokenizers_one():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"  # the shifted space every GPT-2 vocabulary shows


def test_every_id_has_bytes_that_agree_with_its_decoded_text(tok, table):
    assert table.size == len(tok)
    for i in range(table.size):
        b = table.id_bytes[i]
        assert b is not None, i
        text = tok.decode([i])
        if "\ufffd" not in text:
            assert b.decode("utf-8") == text, i
    # byte-level BPE: bytes name every id exactly (b"" aside: special tokens sent without text)
    named = {b: ids for b, ids in table.by_bytes.items() if b}
    assert all(len(ids) == 1 for ids in named.values())
    assert len(named) == table.size


def test_bytes_of_a_multibyte_character_spell_it(tok, table):
    ids = tok.encode("日本", add_special_tokens=False)
    assert b"".join(table.id_bytes[i] for i in ids) == "日本".encode()
    assert [table.lookup_bytes(table.id_bytes[i]) for i in ids] == [[i] for i in ids]


def test_colliding_strings_list_every_id(tok, table):
    replacement = [i for i in range(len(tok)) if tok.decode([i]) == "\ufffd"]
    assert len(replacement) > 1  # partial UTF-8 bytes exist in any byte-level vocabulary
    assert table.lookup_string("\ufffd") == replacement
    # servers may drop special tokens' text, and llama.cpp's drops a token's partial UTF-8 bytes, so a
    # lone fragment byte is "" there too
    fragments = [i for i in replacement if table.id_bytes[i].decode("utf-8", errors="ignore") == ""]
    assert fragments and table.lookup_string("") == sorted([*tok.all_special_ids, *fragments])
    assert table.lookup_bytes(b"") == sorted(tok.all_special_ids)
    the = tok.encode(" the", add_special_tokens=False)
    assert len(the) == 1 and table.lookup_string(" the") == the


def test_exact_spellings(tok, table):
    e6 = table.lookup_bytes(b"\xe6")
    assert len(e6) == 1
    assert table.lookup_string("bytes:\\xe6") == e6
    assert table.lookup_string("\\xe6") == e6
    assert table.lookup_string("token_id:17") == [17]
    assert table.lookup_string(f"token_id:{len(tok)}") == []
    assert table.lookup_string("not a token at all, surely") == []


def test_table_is_built_once_per_tokenizer(tok):
    assert token_table(tok) is token_table(tok)


def _candidates(table, tok, text):
    return [table.lookup_string(tok.decode([i])) for i in tok.encode(text, add_special_tokens=False)]


def test_text_pins_down_replacement_characters(tok, table):
    text = " the日本 of"
    truth = tok.encode(text, add_special_tokens=False)
    cands = _candidates(table, tok, text)
    assert sum(len(c) > 1 for c in cands) >= 2
    res = resolve_chosen(cands, text, table)
    assert res.ids == truth and res.how == "text"
    assert res.ambiguous_steps == [t for t, c in enumerate(cands) if len(c) > 1]


def test_without_text_the_lowest_candidate_is_taken_and_reported(tok, table):
    cands = _candidates(table, tok, "日")
    res = resolve_chosen(cands, None, table)
    assert res.how == "no-text" and res.ids == [c[0] for c in cands]
    res = resolve_chosen(cands, "something else", table)
    assert res.how == "text-mismatch" and res.ids == [c[0] for c in cands]


def test_several_spellings_are_reported(table):
    # two steps of {"", special}: a dropped special token can sit at either step
    e = table.lookup_string("")
    x = table.lookup_string(" the")
    res = resolve_chosen([e, x, e], " the", table)
    assert res.how == "text-several"
    assert res.ids[1] == x[0]


def test_exact_tokens_need_no_text(table):
    res = resolve_chosen([[5], [6]], None, table)
    assert res.ids == [5, 6] and res.how == "exact"


def test_bytes_of_a_replacement_character_read_as_that_string(table):
    """A server that sends the bytes of the decoded text gives 239 191 189 for a partial character."""
    if table.lookup_bytes("\ufffd".encode()):
        pytest.skip("this vocabulary has a token for U+FFFD itself")
    tok = Mapper(table, Line("log.jsonl", 1)).bytes("\ufffd".encode(), "bytes")
    assert tok.ids == table.lookup_string("\ufffd") and len(tok.ids) > 1


def test_mapper_names_the_first_unknown_token(table):
    m = Mapper(table, Line("log.jsonl", 7))
    m.string(" the", "tokens[0]")
    m.string("zzqx-not-a-token", "tokens[1]")
    m.string(" the", "tokens[2]")
    with pytest.raises(KvfpError, match=r"log.jsonl:7: tokens\[1\]: token 'zzqx-not-a-token' is not in the "
                                        r"tokenizer's vocabulary$"):
        m.check()


def test_mapper_says_another_tokenizer_when_most_fail(table):
    m = Mapper(table, Line("log.jsonl", 2))
    for t, s in enumerate(["zzqx-a", "zzqx-b", " the"]):
        m.string(s, f"tokens[{t}]")
    with pytest.raises(KvfpError, match=r"log.jsonl:2: tokens\[0\]: .*2 of the 3 tokens on this line are not: "
                                        r"this log was probably produced by another tokenizer"):
        m.check()
