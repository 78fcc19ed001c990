"""Scheme names → scheme objects. The registry is an explicit list of families."""

from __future__ import annotations

import difflib
import re

from kvfp.compressors.int_pertoken import IntPerToken
from kvfp.compressors.none import NoCompression
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.window import SlidingWindow
from kvfp.errors import UnknownNameError

FAMILIES: tuple[type[Scheme], ...] = (NoCompression, IntPerToken, SlidingWindow)


def canonical_schemes() -> list[Scheme]:
    return [s for fam in FAMILIES for s in fam.canonical()]


def canonical_names() -> list[str]:
    return [s.name for s in canonical_schemes()]


def _grammar_help() -> str:
    return "\n".join(f"  {fam.grammar}" for fam in FAMILIES)


def parse_scheme(name: str) -> Scheme:
    """Parse a scheme name such as ``int8-pertoken`` or ``window-256``.

    Raises :class:`UnknownNameError` (exit code 2) naming the grammar and the closest valid names.
    """
    text = name.strip().lower()
    for fam in FAMILIES:
        m = re.fullmatch(fam.pattern, text)
        if m:
            try:
                return fam.from_match(m.groupdict())
            except ValueError as e:
                raise UnknownNameError(f"scheme {name!r}: {e}") from None
    close = difflib.get_close_matches(text, canonical_names(), n=3, cutoff=0.4)
    hint = f"Did you mean: {', '.join(close)}?\n" if close else ""
    raise UnknownNameError(
        f"unknown scheme {name!r}.\n{hint}Valid names follow these forms:\n{_grammar_help()}\n"
        f"Canonical schemes: {', '.join(canonical_names())}"
    )
