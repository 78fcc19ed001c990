"""Laying planted pieces into filler so that a probe has exactly ``n_tokens`` ids.

A probe's ids are the concatenation of separately tokenized pieces: ``prefix + filler + piece +
filler + … + tail``. BPE would merge some tokens across those boundaries if the whole text were
tokenized at once; kvfp defines the probe as the ids, which is what a serving engine runs when it is
handed ids, so every planted span sits exactly where its metadata says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kvfp.probes.filler import Filler, encode, prefix_ids

SNAP_TOKENS = 24  # how far a planted line may move from its target to land at a line end


@dataclass
class Piece:
    """Planted ids with named sub-spans (``[start, end)`` relative to the piece).

    ``name`` names the whole piece's span in the probe, if set.
    """

    ids: list[int]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    name: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


def piece(tokenizer, *parts, name: str | None = None) -> Piece:
    """Concatenate parts into one :class:`Piece`.

    Each part is text, a list of ids, or ``(text_or_ids, span_name)`` to name where it lands.
    """
    ids: list[int] = []
    spans: dict[str, tuple[int, int]] = {}
    for part in parts:
        label = None
        if isinstance(part, tuple):
            part, label = part
        seg = encode(tokenizer, part) if isinstance(part, str) else [int(i) for i in part]
        if label:
            spans[label] = (len(ids), len(ids) + len(seg))
        ids += seg
    return Piece(ids, spans, name)


@dataclass
class Built:
    """What a family builds for one probe (the suite adds id, family and seed)."""

    ids: list[int]
    spans: dict[str, list[int]]
    answer_ids: list[int] = field(default_factory=list)
    params: dict = field(default_factory=dict)


class BuildContext:
    """What every family needs: the tokenizer, its prefix (BOS) and the filler corpus."""

    def __init__(self, tokenizer, filler: Filler):
        self.tokenizer = tokenizer
        self.filler = filler
        self.prefix = prefix_ids(tokenizer)

    def piece(self, *parts, name: str | None = None) -> Piece:
        return piece(self.tokenizer, *parts, name=name)

    def compose(self, n_tokens: int, planted: list[tuple[int, Piece]], tail: Piece | None,
                rng: random.Random) -> tuple[list[int], dict[str, list[int]], dict]:
        """Plant pieces near target positions in one continuous stretch of filler.

        Parameters
        ----------
        n_tokens : total ids, prefix and tail included
        planted : ``(target start position, piece)``; each lands at the nearest line end within
            ``SNAP_TOKENS`` of its target (else at the target), in target order, never overlapping
        tail : a piece that ends the probe (the question), or None
        rng : draws the filler's offset in the corpus

        Returns
        -------
        ids : exactly ``n_tokens`` ids
        spans : absolute ``[start, end)`` of every named piece and sub-span
        info : ``{"filler_offset": char offset of the filler in the corpus, "filler_tokens": n}``

        Raises
        ------
        ValueError
            when the pieces do not fit in ``n_tokens``.
        """
        planted = sorted(planted, key=lambda tp: tp[0])
        tail = tail or Piece([])
        fixed = len(self.prefix) + sum(len(p) for _, p in planted) + len(tail)
        n_fill = n_tokens - fixed
        if n_fill < 0:
            raise ValueError(f"{n_tokens} tokens cannot hold the planted structure ({fixed} tokens)")
        fill, offset = self.filler.take(n_fill, rng)

        ids, spans, used = list(self.prefix), {}, 0
        for target, p in planted:
            # Filler tokens to place before this piece, measured in filler coordinates.
            want = min(max(target - len(ids), 0) + used, n_fill)
            cut = self._snap(fill, want, lo=used)
            ids += fill[used:cut]
            used = cut
            _record(spans, p, len(ids))
            ids += p.ids
        ids += fill[used:]
        _record(spans, tail, len(ids))
        ids += tail.ids
        assert len(ids) == n_tokens  # the arithmetic above, not user input
        return ids, spans, {"filler_offset": offset, "filler_tokens": n_fill}

    def _snap(self, fill: list[int], cut: int, lo: int) -> int:
        """The nearest cut in ``[lo, len(fill))`` within ``SNAP_TOKENS`` just before a newline."""
        for d in range(SNAP_TOKENS + 1):
            for c in (cut - d, cut + d):
                if lo <= c < len(fill) and self.filler.starts_line(fill[c]):
                    return c
        return cut


def _record(spans: dict, p: Piece, start: int) -> None:
    if p.name:
        spans[p.name] = [start, start + len(p)]
    for label, (a, b) in p.spans.items():
        spans[label] = [start + a, start + b]


def depth_target(n_tokens: int, depth: float) -> int:
    """The position a fraction ``depth`` into the probe."""
    return round(depth * n_tokens)
