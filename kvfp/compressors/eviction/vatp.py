"""``vatp-B``: value-aware token pruning — accumulated attention times value norm (arXiv 2406.12335)."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.eviction.base import NUM, check_fraction, fmt
from kvfp.compressors.eviction.h2o import HeavyHitterLayer
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


@dataclass(frozen=True)
class VATP(Scheme):
    """Value-Aware Token Pruning on H2O (Guo et al., arXiv 2406.12335).

    Rule: an entry's importance is ``A_j · ||v_j||_1``, where ``A_j`` is H2O's accumulated
    attention (summed over every query so far and over the query heads of the KV head) and
    ``v_j`` the value kept for it (decoded, in a hybrid). Per KV head, keep the ``floor(B/2·L)``
    most recent entries plus the ``floor(B/2·L)`` most important others, the first ``sinks``
    real tokens always among the latter (the paper keeps attention sinks because their value
    norms are small). ``L`` is the prompt length, fixed at prefill; eviction at the end of
    prefill and at every decode step (one in, one out). Gene phase ``both``. ``B = 1`` keeps
    everything.

    The heavy/recent split in halves follows the authors' H2O setting (heavy ratio = recent
    ratio = half the budget). Deviation: 4 sinks by default (the authors use 20 on 4k contexts;
    kvfp-tiny's prompts are 2048 tokens and tests use short ones).
    """

    budget: float = 0.5
    sinks: int = 4

    family = "vatp"
    grammar = "vatp-B[-sS]  (B in (0, 1]: kept fraction, half recent, half by attention × ||v||₁)"
    pattern = rf"vatp-(?P<budget>{NUM})(?:-s(?P<sinks>\d+))?"
    summary = "accumulated attention weighted by value L1 norm, plus a recent window"
    role = "eviction"

    def __post_init__(self):
        check_fraction("budget", self.budget)
        if self.sinks < 0:
            raise ValueError("sinks must be ≥ 0")

    @property
    def name(self) -> str:
        return f"vatp-{fmt(self.budget)}" + ("" if self.sinks == 4 else f"-s{self.sinks}")

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token", "head"), strategy="dynamic",
            importance="value_aware", compensation=("sinks_kept",), phase="both",
            params={"budget": self.budget, "sinks": self.sinks},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        half = self.budget / 2
        return HeavyHitterLayer(step, half, half, make_store, value_norm=True, sinks=self.sinks)

    @classmethod
    def from_match(cls, groups):
        sinks = groups["sinks"]
        return cls(budget=float(groups["budget"]), sinks=4 if sinks is None else int(sinks))
