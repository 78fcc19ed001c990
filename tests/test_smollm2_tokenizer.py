"""smollm2-135m's tokenizer cuts text as llama.cpp does for the GGUF (``tokenizer.ggml.pre`` = smollm)."""

import importlib.util
import inspect
import json.decoder

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from kvfp.models import gguf_models
from kvfp.probes.filler import prefix_ids

DIGITS = "3.14159 in 2026, 1234567 and 0x1F"
TEXTS = [
    DIGITS,
    "\n\n    10 + 20",
    "x =  1\n    2\n\t\t3   4",
    "def f(x):\n    return x ** 2  # square\n\nfor i in range(10):\n\tprint(f(i), end=' ')\n",
    "it's we'll they've I'D don't  ",
    "Café naïve — 東京 2024年, ½ ² Ⅻ ١٢٣ 🦙 emoji\u00a0nbsp  \n",
    inspect.getsource(json.decoder)[:3000],
]


@pytest.fixture(scope="module")
def tok(smollm2):
    from transformers import AutoTokenizer

    _, folder = smollm2
    return AutoTokenizer.from_pretrained(folder)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_every_digit_is_its_own_token_and_ids_decode_back(tok):
    got = ids(tok, DIGITS)
    pieces = [tok.decode([i]) for i in got]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == [c for c in DIGITS if c.isdigit()]
    assert tok.decode(got) == DIGITS


@pytest.mark.parametrize("text", TEXTS[1:], ids=lambda t: repr(t[:12]))
def test_ids_decode_back_to_the_text(tok, text):
    assert tok.decode(ids(tok, text)) == text


def test_whitespace_before_a_number_is_cut_as_llama_cpp_cuts_it(tok):
    # llama.cpp isolates every \p{N} before its GPT-2 split, so the indentation stays one piece
    assert tok.convert_ids_to_tokens(ids(tok, "\n\n    10")) == ["ĊĊĠĠĠĠ", "1", "0"]
    # transformers' GGUF tokenizer (ByteLevel alone) cuts " 10" off the indentation instead
    plain = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert plain.encode("\n\n    10", add_special_tokens=False).tokens == ["ĊĊĠĠĠ", "Ġ", "1", "0"]


def test_no_bos_is_added(tok):
    assert prefix_ids(tok) == []
    assert tok(DIGITS)["input_ids"] == ids(tok, DIGITS)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama_cpp (llama-cpp-python) is not installed: kvfp's ids are not compared with "
                           "llama.cpp's own tokenizer")
def test_ids_equal_llama_cpp(tok):
    import llama_cpp

    gguf, _ = gguf_models.find_gguf("smollm2-135m")
    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert ids(tok, text) == llm.tokenize(text.encode(), add_bos=False, special=False), repr(text[:40])
