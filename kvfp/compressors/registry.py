"""Scheme names → scheme objects. The registry is an explicit list of families."""

from __future__ import annotations

import difflib
import re

from kvfp.compressors import eviction, projection, quantization
from kvfp.compressors.hybrid import Hybrid
from kvfp.compressors.none import NoCompression
from kvfp.compressors.scheme import Scheme
from kvfp.errors import UnknownNameError

FAMILIES: tuple[type[Scheme], ...] = (
    NoCompression, *quantization.FAMILIES, *eviction.FAMILIES, *projection.FAMILIES,
)
CANONICAL_HYBRIDS = ("window-512+int4-pertoken", "h2o-0.1-0.1+int4-pertoken", "snapkv-0.5+kivi-2")


def canonical_schemes() -> list[Scheme]:
    singles = [s for fam in FAMILIES for s in fam.canonical()]
    return singles + [parse_scheme(h) for h in CANONICAL_HYBRIDS if _parses(h)]


def _parses(name: str) -> bool:
    try:
        parse_scheme(name)
        return True
    except UnknownNameError:
        return False


def canonical_names() -> list[str]:
    return [s.name for s in canonical_schemes()]


def _grammar_help() -> str:
    return "\n".join(f"  {fam.grammar}" for fam in (*FAMILIES, Hybrid))


def _unknown(name: str, text: str) -> UnknownNameError:
    names = [s.name for fam in FAMILIES for s in fam.canonical()] + list(CANONICAL_HYBRIDS)
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.4)
    hint = f"Did you mean: {', '.join(close)}?\n" if close else ""
    return UnknownNameError(
        f"unknown scheme {name!r}.\n{hint}Valid names follow these forms:\n{_grammar_help()}\n"
        f"Canonical schemes: {', '.join(names)}"
    )


def _parse_single(name: str, text: str) -> Scheme:
    for fam in FAMILIES:
        m = re.fullmatch(fam.pattern, text)
        if m:
            try:
                return fam.from_match(m.groupdict())
            except ValueError as e:
                raise UnknownNameError(f"scheme {name!r}: {e}") from None
    raise _unknown(name, text)


def parse_scheme(name: str) -> Scheme:
    """Parse a scheme name such as ``int8-pertoken``, ``window-256`` or ``window-256+int4-pertoken``.

    Raises :class:`UnknownNameError` (exit code 2) naming the grammar and the closest valid names.
    """
    text = name.strip().lower()
    parts = text.split("+")
    if len(parts) == 1:
        return _parse_single(name, text)
    if len(parts) != 2:
        raise UnknownNameError(f"scheme {name!r}: a hybrid has exactly two parts, EVICTION+QUANTIZATION")
    a, b = (_parse_single(name, p) for p in parts)
    try:
        return Hybrid(a, b)
    except ValueError as e:
        raise UnknownNameError(f"scheme {name!r}: {e}") from None
