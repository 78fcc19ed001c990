"""Filler: token ids cut from a corpus at seeded offsets, and the tokenizer helpers probes share."""

from __future__ import annotations

import random
from collections import Counter
from functools import cached_property

from kvfp.errors import KvfpError

MIN_CORPUS_CHARS = 2000
CHARS_PER_TOKEN_GUESS = 4  # a first guess at how much text to tokenize; doubled until it is enough
RARE_SAMPLE_CHARS = 200_000  # the stretch of corpus whose token counts decide which tokens are rare


def encode(tokenizer, text: str) -> list[int]:
    """``text`` as ids, with no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def prefix_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (``[bos]`` for Llama-style tokenizers, often ``[]``)."""
    plain = encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i]
    # A tokenizer whose specials change the text's own tokens (a prefix space…): keep the BOS if it adds one.
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and full[:1] == [bos] else []


class Filler:
    """Continuous stretches of a corpus, as ids of one tokenizer.

    Parameters
    ----------
    tokenizer : the model's tokenizer
    text : the corpus; stretches start at a line start and wrap around its end
    """

    def __init__(self, tokenizer, text: str):
        if len(text.strip()) < MIN_CORPUS_CHARS:
            raise KvfpError(f"the probe corpus has {len(text.strip())} characters; probes need at least "
                            f"{MIN_CORPUS_CHARS} characters of filler text", exit_code=2)
        self.tokenizer = tokenizer
        self.text = text
        self._starts_line: dict[int, bool] = {}

    def take(self, n: int, rng: random.Random) -> tuple[list[int], int]:
        """``n`` ids of text starting at a random line start; returns ``(ids, char offset)``."""
        if n <= 0:
            return [], 0
        offset = self._line_start(rng.randrange(len(self.text)))
        chars = n * CHARS_PER_TOKEN_GUESS + 256
        while True:
            ids = encode(self.tokenizer, self._cyclic(offset, chars))
            if len(ids) > n:  # one id past n: the last kept id is never a piece of a word cut short
                return ids[:n], offset
            chars *= 2

    def starts_line(self, token_id: int) -> bool:
        """Whether the token's text starts with a newline: cut just before it, a planted line reads
        as a line of its own (byte-level BPE merges a newline with the next line's indent, so few
        tokens end with one)."""
        if token_id not in self._starts_line:
            self._starts_line[token_id] = self.tokenizer.decode([token_id]).startswith("\n")
        return self._starts_line[token_id]

    @cached_property
    def token_counts(self) -> Counter:
        """How often each id occurs in the corpus's first ``RARE_SAMPLE_CHARS`` characters."""
        return Counter(encode(self.tokenizer, self.text[:RARE_SAMPLE_CHARS]))

    def rare_ids(self, k: int, rng: random.Random) -> list[int]:
        """``k`` distinct ordinary (non-special) ids that the corpus uses least, drawn by ``rng``."""
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        vocab = [i for i in range(len(self.tokenizer)) if i not in special]
        counts = self.token_counts
        unseen = [i for i in vocab if counts[i] == 0]
        pool = unseen if len(unseen) >= 4 * k else sorted(vocab, key=lambda i: (counts[i], i))[:4 * k]
        return rng.sample(pool, k)

    def _line_start(self, pos: int) -> int:
        nl = self.text.find("\n", pos)
        return 0 if nl < 0 or nl + 1 >= len(self.text) else nl + 1

    def _cyclic(self, offset: int, chars: int) -> str:
        out, pos = [], offset
        while chars > 0:
            chunk = self.text[pos:pos + chars]
            out.append(chunk)
            chars -= len(chunk)
            pos = 0
            if chars > 0:
                out.append("\n\n")  # the corpus wraps around as if it were one more file
        return "".join(out)
