"""JSON from a file kvfp did not write itself: parsed with every way it can fail turned into one
:class:`~kvfp.errors.KvfpError` naming where it came from.

``json`` raises ``ValueError`` for bad syntax, ``UnicodeDecodeError`` (a ``ValueError``) for bytes
that are not UTF-8, and ``RecursionError`` for nesting deeper than the interpreter's stack; none
of the formats kvfp reads nests more than a few levels.
"""

from __future__ import annotations

import json

from kvfp.errors import KvfpError


def parse_json(text: str | bytes, where: str, **kwargs):
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise KvfpError(f"{where}: JSON nested too deeply (no kvfp file nests more than a few levels)") from None
    except ValueError as e:
        raise KvfpError(f"{where}: not valid JSON ({e})") from None
