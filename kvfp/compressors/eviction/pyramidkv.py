"""``pyramidkv-B``: SnapKV selection with budgets shrinking with depth (PyramidKV, arXiv 2406.02069)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from kvfp.compressors.eviction.base import NUM
from kvfp.compressors.eviction.scores import budget_tokens
from kvfp.compressors.eviction.snapkv import SnapKV
from kvfp.compressors.gene import Gene

BETA = 20  # the official code's default: the top layer keeps 1/beta of the average selection


def pyramid_schedule(selected: int, prefix: int, num_layers: int, beta: int = BETA) -> list[int]:
    """Per-layer counts of selected prefix entries (the observation window excluded).

    An arithmetic sequence from the bottom layer down to ``selected / beta`` at the top, whose
    mean is exactly ``selected``: the top is ``selected / beta``, the bottom ``2·selected - top``;
    where the bottom would exceed the ``prefix`` entries there are, it is capped and the top
    raised to keep the mean (as the official code does). Integer counts by largest remainder, so
    they sum to ``num_layers · selected`` exactly.
    """
    if num_layers == 1:
        return [selected]
    top = Fraction(selected, beta)  # exact arithmetic: the counts must sum exactly
    bottom = 2 * selected - top
    if bottom > prefix:
        bottom, top = Fraction(prefix), 2 * selected - Fraction(prefix)
    raw = [bottom - i * (bottom - top) / (num_layers - 1) for i in range(num_layers)]
    counts = [math.floor(x) for x in raw]
    short = num_layers * selected - sum(counts)
    by_remainder = sorted(range(num_layers), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """PyramidKV (Cai et al., arXiv 2406.02069): SnapKV's scoring and selection, with per-layer
    budgets that shrink linearly with depth ("pyramidal information funneling").

    Budget: the same average as ``snapkv-B`` — ``floor(B·L)`` entries per KV head averaged over
    layers (``L`` the prompt length) — each layer keeping the ``window`` last prompt entries plus
    its share of selected prefix entries from :func:`pyramid_schedule` (``beta = 20``, window 32,
    average pooling of width 5, as in the official code). Selection happens once, at the end of
    prefill; decode appends. Gene phase ``prefill``.

    Deviation: the official code rounds the schedule's step down, so its average falls slightly
    short of the budget; kvfp distributes the remainder so the average is exact.
    """

    family = "pyramidkv"
    grammar = "pyramidkv-B[-wW][-kK]  (B in (0, 1]: kept fraction averaged over layers)"
    pattern = rf"pyramidkv-(?P<budget>{NUM})(?:-w(?P<window>\d+))?(?:-k(?P<kernel>\d+))?"
    summary = "SnapKV scoring with budgets shrinking with depth"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token", "head", "layer"), strategy="dynamic",
            importance="attention_window", phase="prefill",
            params={"budget": self.budget, "window": self.window, "kernel": self.kernel, "beta": BETA},
        )

    def layer_budget(self, layer_idx, num_layers):
        def budget(prompt_len: torch.Tensor) -> torch.Tensor:
            out = []
            for n, L in zip(budget_tokens(self.budget, prompt_len).tolist(), prompt_len.tolist()):
                w = min(self.window, L)
                if n <= w:  # the window alone fills the budget, in every layer
                    out.append(n)
                    continue
                out.append(w + pyramid_schedule(n - w, L - w, num_layers)[layer_idx])
            return torch.tensor(out, device=prompt_len.device)
        return budget
