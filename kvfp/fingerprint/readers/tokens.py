"""Token strings and bytes back to ids, with the model's tokenizer.

Endpoints name tokens by text. Bytes (OpenAI chat's ``bytes``) identify a byte-level BPE token
exactly; a decoded string may not: every partial UTF-8 byte decodes to ``"�"``, so those ids share
one string. :class:`TokenTable` is built once per tokenizer and gives every id its exact bytes and
every string the *list* of ids it may stand for; choosing among several is left to the caller
(:mod:`kvfp.fingerprint.readers.resolve`), which has the context to do it.

Two exact spellings some servers use are understood as well: ``"token_id:523"`` (vLLM's
``return_tokens_as_token_ids``) and ``"bytes:\\xe2\\x80"`` or ``"\\xe2\\x80"`` (OpenAI, for tokens
that are not whole UTF-8 characters; a literal vocabulary string wins over the escape reading).
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field

from kvfp.fingerprint.readers.fields import Line

_TOKEN_ID = re.compile(r"token_id:(\d+)")
_BYTES = re.compile(r"(?:bytes:)?((?:\\x[0-9a-fA-F]{2})+)")
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table, used by every byte-level BPE: printable
    Latin-1 bytes stand for themselves, the other 68 are shifted to code points 256 and up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@dataclass
class TokenTable:
    """Every id's bytes and decoded string, and the reverse maps.

    Attributes
    ----------
    size : number of ids (``len(tokenizer)``)
    id_bytes : per id, its exact bytes (``None`` where the tokenizer does not define them)
    strings : per id, ``tokenizer.decode([id])``
    special : ids of special tokens; servers usually leave them out of the text, so a special
        token may also be written as ``""``
    by_bytes, by_string : bytes / string → ids it may stand for, ascending
    """

    size: int
    id_bytes: list[bytes | None]
    strings: list[str]
    special: frozenset[int]
    by_bytes: dict[bytes, list[int]] = field(repr=False)
    by_string: dict[str, list[int]] = field(repr=False)

    def lookup_string(self, s: str) -> list[int]:
        """Ids the string ``s`` may stand for (``[]``: not in this vocabulary)."""
        m = _TOKEN_ID.fullmatch(s)
        if m:
            i = int(m.group(1))
            return [i] if i < self.size else []
        if s in self.by_string:  # before escapes: code vocabularies hold literal "\\x00" tokens
            return self.by_string[s]
        m = _BYTES.fullmatch(s)
        if m:
            return self.lookup_bytes(bytes(int(h, 16) for h in m.group(1).split("\\x")[1:]))
        return []

    def lookup_bytes(self, b: bytes) -> list[int]:
        return self.by_bytes.get(b, [])

    def text_bytes(self, i: int) -> tuple[bytes, ...]:
        """What id ``i`` may contribute to a generated text: its bytes, or nothing for a special
        token a server dropped from the text."""
        b = self.id_bytes[i]
        if i in self.special:
            return (b, b"") if b else (b"",)
        return (b,) if b is not None else ()


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_table(tokenizer) -> TokenTable:
    """The table for ``tokenizer``, built on first use (about 0.1 s for 8k ids) and kept while the
    tokenizer lives."""
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = _build(tokenizer)
    try:
        _TABLES[tokenizer] = table
    except TypeError:  # not weak-referenceable: rebuild next time rather than keep it alive forever
        pass
    return table


def _build(tokenizer) -> TokenTable:
    n = len(tokenizer)
    ids = list(range(n))
    strings = [tokenizer.decode([i]) for i in ids]
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if i < n}
    special = frozenset(i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < n)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    to_bytes = _piece_decoder(tokenizer)
    id_bytes: list[bytes | None] = []
    for i in ids:
        b = added[i].encode() if i in added else to_bytes(pieces[i]) if pieces[i] is not None else None
        if b is None and "\ufffd" not in strings[i]:
            b = strings[i].encode()
        id_bytes.append(b)
    by_bytes: dict[bytes, list[int]] = {}
    by_string: dict[str, list[int]] = {}
    for i in ids:
        if id_bytes[i] is not None:
            by_bytes.setdefault(id_bytes[i], []).append(i)
        if i in special:  # a server that drops special tokens' text sends them with no bytes
            by_bytes.setdefault(b"", []).append(i)
        # a server may show a token by its exact text (its bytes) or by decode([id]); SentencePiece
        # decoders drop a word's leading space in the second, so both spellings are indexed
        names = {strings[i]}
        if id_bytes[i] is not None:
            text = id_bytes[i].decode("utf-8", errors="replace")
            if "\ufffd" not in text or "\ufffd" in strings[i]:
                names.add(text)
            # llama.cpp's server spells a token holding part of a UTF-8 character by dropping the
            # partial bytes (b" \xe2" is " ", a lone continuation byte is ""): index that spelling
            # too, so that such a key reads as ambiguous instead of as the wrong, complete token
            names.add(id_bytes[i].decode("utf-8", errors="ignore"))
        if i in special:
            names.add("")
        for s in names:
            by_string.setdefault(s, []).append(i)
    return TokenTable(size=n, id_bytes=id_bytes, strings=strings, special=special, by_bytes=by_bytes,
                      by_string=by_string)


def _piece_decoder(tokenizer):
    """A function from a vocabulary piece (``"Ġthe"``, ``"▁the"``, ``"<0x0A>"``) to its bytes, chosen
    by the tokenizer's decoder; ``None`` where the piece cannot be read that way."""
    kind = _decoder_kind(tokenizer)
    if kind == "byte-level":
        inverse = {c: b for b, c in bytes_to_unicode().items()}

        def byte_level(piece: str) -> bytes | None:
            try:
                return bytes(inverse[c] for c in piece)
            except KeyError:
                return None

        return byte_level
    if kind == "sentencepiece":

        def sentencepiece(piece: str) -> bytes | None:
            m = _SP_BYTE.fullmatch(piece)
            return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode()

        return sentencepiece
    return lambda piece: None


def _decoder_kind(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return None
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    types = {p.get("type") for p in parts if isinstance(p, dict)}
    if "ByteLevel" in types:
        return "byte-level"
    if types & {"ByteFallback", "Metaspace"} or any(
            p.get("type") == "Replace" and "\u2581" in json.dumps(p.get("pattern")) for p in parts):
        return "sentencepiece"
    return None


@dataclass
class Tok:
    """One token as a log names it.

    Attributes
    ----------
    ids : ids it may be (ascending); one when the log identifies it exactly
    shown : how the log wrote it, for messages
    field : where in the line it sits
    """

    ids: list[int]
    shown: str
    field: str

    @property
    def exact(self) -> bool:
        return len(self.ids) == 1


class Mapper:
    """Maps one line's tokens and remembers which failed, so that the error can say whether one
    token is odd or most are (a log from another tokenizer)."""

    def __init__(self, table: TokenTable, line: Line):
        self.table, self.line = table, line
        self.total, self.failed = 0, []

    def string(self, s: str, field: str) -> Tok:
        return self._tok(self.table.lookup_string(s), repr(s), field)

    def bytes(self, b: bytes, field: str) -> Tok:
        ids = self.table.lookup_bytes(b)
        if not ids:
            # some servers encode the token's *decoded text*: "\ufffd" (bytes 239 191 189) for a
            # partial character; read those bytes as that string, ambiguity and all
            ids = self.table.lookup_string(b.decode("utf-8", errors="replace"))
        return self._tok(ids, f"bytes {list(b)}", field)

    def _tok(self, ids: list[int], shown: str, field: str) -> Tok:
        self.total += 1
        if not ids:
            self.failed.append((field, shown))
        return Tok(ids=ids, shown=shown, field=field)

    def check(self) -> None:
        """Raise if any token of the line was not in the vocabulary."""
        if not self.failed:
            return
        field, shown = self.failed[0]
        msg = f"token {shown} is not in the tokenizer's vocabulary"
        n = len(self.failed)
        if n * 2 > self.total:
            msg += (f"; {n} of the {self.total} tokens on this line are not: this log was probably produced by "
                    f"another tokenizer (pass the model the endpoint serves)")
        elif n > 1:
            msg += f" ({n} of the {self.total} tokens on this line are not)"
        raise self.line.error(field, msg)
