"""Token ids as an endpoint shows them: the text of each token alone, and its exact bytes.

OpenAI-style logs carry token *strings* (``tokenizer.decode([id])``, not the vocabulary's own
spelling such as ``Ġdef``) and, in chat logs, the token's UTF-8 ``bytes``. For byte-level BPE the
vocabulary spells every byte with one printable character; inverting that alphabet gives the
exact bytes even of tokens that hold half a UTF-8 character (whose decoded text is ``"\\ufffd"``).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """Character → byte for byte-level BPE vocabularies: printable Latin-1 bytes stand for
    themselves, every other byte for the code point ``256 + n`` (n counting those bytes in order)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _decoder_types(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    dec = json.loads(backend.to_str()).get("decoder") or {}
    found, stack = set(), [dec]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            found.add(d.get("type"))
            stack += d.get("decoders") or []
    return found


class TokenText:
    """Strings and bytes of token ids for one tokenizer (computed on demand, then remembered)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.byte_level = "ByteLevel" in _decoder_types(tokenizer)
        self._added = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        self._text: dict[int, str] = {}
        self._bytes: dict[int, list[int]] = {}

    def text(self, token_id: int) -> str:
        """What an endpoint shows for this token on its own."""
        s = self._text.get(token_id)
        if s is None:
            s = self._text[token_id] = self.tokenizer.decode([token_id])
        return s

    def bytes(self, token_id: int) -> list[int]:
        """The token's exact bytes (a list of ints, as OpenAI chat logs carry them)."""
        b = self._bytes.get(token_id)
        if b is None:
            b = self._bytes[token_id] = list(self._exact_bytes(token_id))
        return b

    def _exact_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if self.byte_level:
            alphabet = byte_level_alphabet()
            if all(c in alphabet for c in piece):
                return bytes(alphabet[c] for c in piece)
        m = _BYTE_FALLBACK.fullmatch(piece or "")
        if m:  # SentencePiece byte fallback
            return bytes([int(m.group(1), 16)])
        return self.text(token_id).encode("utf-8")
