"""Pre-tokenizers that make a GGUF's tokenizer cut text where llama.cpp cuts it.

transformers rebuilds a GGUF's BPE tokenizer with GPT-2's ``ByteLevel`` pre-tokenizer, whatever
the file's ``tokenizer.ggml.pre`` names; llama.cpp chooses its split regexes from that field
(``llama_vocab::impl::load`` and ``llm_tokenizer_bpe`` in ``src/llama-vocab.cpp``). Where the two
differ, the same text becomes different ids, and an endpoint's tokens no longer line up with the
reference model's.

``smollm`` (``LLAMA_VOCAB_PRE_TYPE_SMOLLM``; the same branch serves starcoder, refact, command-r,
codeshell, exaone, minerva) is two regexes applied in turn, each keeping the text between its
matches as pieces too:

1. ``\\p{N}`` — every number character (Unicode categories Nd, Nl, No) becomes a piece of its own;
2. GPT-2's ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)``, run
   by llama.cpp's hand-written GPT-2 splitter, which also takes GPT-2's final ``\\s+``.

``Split(\\p{N}, isolated)`` then ``ByteLevel(use_regex=True)`` is the same two passes in
``tokenizers`` (HF's own SmolLM2 tokenizer has ``Digits(individual_digits=True)`` in the first
place, the same split). SmolLM2's vocabulary has no token that holds a digit and anything else,
so the first pass never changes a digit's own id; it changes the whitespace before a number. Without it,
``"\\n\\n    10"`` is cut into ``"\\n\\n   "`` and ``" 10"`` (ids for ``"\\n\\n   "``, ``" "``, ``"1"``,
``"0"``) where llama.cpp cuts ``"\\n\\n    "``, ``"1"``, ``"0"`` (three ids): numbers after indentation
are common in code.
"""

from __future__ import annotations

from tokenizers import Regex, pre_tokenizers

from kvfp.errors import KvfpError


def _smollm():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


PRE_TOKENIZERS = {"smollm": _smollm}


def llama_cpp_pre_tokenizer(pre: str):
    """The ``tokenizers`` pre-tokenizer equivalent to llama.cpp's for ``tokenizer.ggml.pre == pre``."""
    if pre not in PRE_TOKENIZERS:
        raise KvfpError(f"the GGUF's pre-tokenizer {pre!r} is not one kvfp can reproduce "
                        f"({', '.join(PRE_TOKENIZERS)}); its ids would not match llama.cpp's", exit_code=2)
    return PRE_TOKENIZERS[pre]()
