"""Reading one JSON field at a time, so that every defect is reported with its file, line and field.

Python's ``json`` accepts ``NaN`` and ``Infinity``; they are let through parsing and refused here,
where the field they sit in is known.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from kvfp.errors import KvfpError

# A logprob is at most 0; servers compute it in float32, so a rounding hair above 0 is tolerated.
LOGPROB_SLACK = 1e-6
# and never far below the float32 logits' range; -9999 (vLLM's stand-in for -inf) stays inside
LOGPROB_FLOOR = -1e5


class JsonObject(dict):
    """A JSON object that also keeps its key/value pairs in file order, duplicates included
    (a top-k dict written with two equal keys would otherwise lose one silently)."""

    pairs: list[tuple[str, object]]


def _object(pairs: list[tuple[str, object]]) -> JsonObject:
    obj = JsonObject(pairs)
    obj.pairs = pairs
    return obj


@dataclass(frozen=True)
class Line:
    """Where a record came from: ``path:n``."""

    path: str
    n: int

    def error(self, field: str | None, message: str) -> KvfpError:
        where = f"{self.path}:{self.n}"
        return KvfpError(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def parse(self, text: str) -> JsonObject:
        try:
            rec = json.loads(text, object_pairs_hook=_object)
        except ValueError as e:
            raise self.error(None, f"not valid JSON ({e})") from None
        except RecursionError:  # json's decoder recurses once per level: a hostile line can exhaust the stack
            raise self.error(None, "JSON nested too deeply (no log format nests more than a few levels)") from None
        if not isinstance(rec, dict):
            raise self.error(None, f"expected a JSON object, found {type(rec).__name__}")
        return rec


def req(line: Line, obj: dict, key: str, field: str):
    """``obj[key]``; absent or ``null`` is an error naming ``field``."""
    if key not in obj:
        raise line.error(field, "missing field")
    if obj[key] is None:
        raise line.error(field, "is null")
    return obj[key]


def as_dict(line: Line, v, field: str) -> dict:
    if not isinstance(v, dict):
        raise line.error(field, f"expected an object, found {_kind(v)}")
    return v


def as_list(line: Line, v, field: str) -> list:
    if not isinstance(v, list):
        raise line.error(field, f"expected a list, found {_kind(v)}")
    return v


def as_str(line: Line, v, field: str) -> str:
    if not isinstance(v, str):
        raise line.error(field, f"expected a string, found {_kind(v)}")
    return v


def as_int(line: Line, v, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise line.error(field, f"expected an integer, found {_kind(v)}")
    return v


def as_float(line: Line, v, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise line.error(field, f"expected a number, found {_kind(v)}")
    if not math.isfinite(v):
        raise line.error(field, f"{v} is not a finite number")
    return float(v)


def as_logprob(line: Line, v, field: str) -> float:
    x = as_float(line, v, field)
    if x > LOGPROB_SLACK:
        raise line.error(field, f"logprob {x} > 0 (a log-probability is never positive)")
    if x < LOGPROB_FLOOR:
        raise line.error(field, f"logprob {x:g} is below {LOGPROB_FLOOR:g}, which no float32 softmax gives (servers "
                                f"write -9999 for an impossible token)")
    return x


def as_ids(line: Line, v, field: str, vocab: int) -> list[int]:
    """A list of token ids, each inside the tokenizer's ``vocab`` ids."""
    out = []
    for i, x in enumerate(as_list(line, v, field)):
        x = as_int(line, x, f"{field}[{i}]")
        if not 0 <= x < vocab:
            raise line.error(f"{field}[{i}]", f"token id {x} is outside the tokenizer's {vocab} ids "
                                              f"(this log was probably produced with another tokenizer)")
        out.append(x)
    return out


def _kind(v) -> str:
    return "null" if v is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)
