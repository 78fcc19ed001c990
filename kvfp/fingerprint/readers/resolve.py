"""Choosing among the ids an ambiguous token string stands for.

The generated tokens are constrained by the generated text: their bytes, end to end, must spell
it. Several ``"�"`` tokens in a row (the pieces of one multi-byte character) can usually be pinned
down that way, and when they cannot, the caller is told so instead of receiving a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.fingerprint.readers.tokens import TokenTable


@dataclass
class Resolution:
    """``ids`` chosen per step and how: ``"exact"`` (nothing was ambiguous), ``"text"`` (the text
    admits one id sequence), ``"text-several"`` (it admits several; the first was taken),
    ``"no-text"`` / ``"text-mismatch"`` (first candidates taken)."""

    ids: list[int]
    how: str
    ambiguous_steps: list[int]


def resolve_chosen(candidates: list[list[int]], text: str | None, table: TokenTable) -> Resolution:
    """Pick one id per step from ``candidates`` so that the tokens spell ``text``.

    Parameters
    ----------
    candidates : per step, the ids the log's token may be (non-empty, ascending)
    text : the generated text the log reports (``None``: not reported)
    """
    ambiguous = [t for t, c in enumerate(candidates) if len(c) > 1]
    first = [c[0] for c in candidates]
    if not ambiguous:
        return Resolution(first, "exact", [])
    if text is None:
        return Resolution(first, "no-text", ambiguous)
    path = _spell(candidates, text.encode(), table)
    if path is None:
        return Resolution(first, "text-mismatch", ambiguous)
    ids, count = path
    return Resolution(ids, "text" if count == 1 else "text-several", ambiguous)


def _spell(candidates: list[list[int]], target: bytes, table: TokenTable) -> tuple[list[int], int] | None:
    """A sequence of candidates whose bytes concatenate to ``target`` and how many there are
    (capped at 2), or ``None``.

    Forward over steps, keeping the byte offsets reachable so far with their path counts and one
    way back to each; the offsets stay few because most steps have one candidate.
    """
    reach = {0: 1}
    back: list[dict[int, tuple[int, int]]] = []
    for cands in candidates:
        nxt: dict[int, int] = {}
        way: dict[int, tuple[int, int]] = {}
        for pos, count in reach.items():
            for i in cands:
                for b in table.text_bytes(i):
                    if target.startswith(b, pos):
                        end = pos + len(b)
                        nxt[end] = min(2, nxt.get(end, 0) + count)
                        way.setdefault(end, (pos, i))
        if not nxt:
            return None
        reach = nxt
        back.append(way)
    if len(target) not in reach:
        return None
    ids, pos = [], len(target)
    for way in reversed(back):
        pos, i = way[pos]
        ids.append(i)
    return ids[::-1], reach[len(target)]
