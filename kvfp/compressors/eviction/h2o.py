"""``h2o-H-R``: heavy hitters by cumulative attention plus recent tokens (H2O, arXiv 2306.14048)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.eviction.base import NUM, EvictionLayer, check_fraction, fmt
from kvfp.compressors.eviction.scores import budget_tokens
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme
from kvfp.kernels.dispatch import h2o_accumulate


class HeavyHitterLayer(EvictionLayer):
    """Keeps, per KV head, the ``recent`` most recent entries plus the ``heavy`` entries of highest
    accumulated attention among the others; evicts after every forward.

    Scores: every forward adds the attention each entry received, summed over that forward's
    queries and over the query heads sharing the KV head, to the entry's running total (H2O's
    "accumulated attention"; the prompt's queries all vote at prefill). With ``value_norm`` the
    ranking multiplies the total by the entry's value L1 norm (VATP). The first ``sinks`` real
    tokens are always kept, inside the heavy budget (VATP's attention sinks).

    Budgets are fractions of the prompt length ``L`` fixed at prefill: ``floor(heavy·L)`` heavy
    plus ``floor(recent·L)`` recent entries; once reached, each decode step adds one entry and
    evicts one. ``heavy + recent ≥ 1`` never evicts (the no-op setting).
    """

    wants_scores = True

    def __init__(self, step, heavy: float, recent: float, make_store=None, value_norm: bool = False,
                 sinks: int = 0):
        super().__init__(step, make_store)
        self.heavy, self.recent, self.value_norm, self.sinks = heavy, recent, value_norm, sinks
        if heavy + recent >= 1:
            self.wants_scores = False  # keeps everything: plain attention, no scores needed

    def observe(self, probs):
        n_kv = self.kv.keys().shape[1]
        # (B, Hkv, S): the previous totals plus this forward's votes, summed over queries and group heads
        self.score = h2o_accumulate(self.aligned(self.score, 0.0), self.real_queries(probs.float()), n_kv)
        n_heavy = budget_tokens(self.heavy, self.prompt_len, minimum=0)
        n_recent = budget_tokens(self.recent, self.prompt_len, minimum=0)
        importance = self.score
        if self.value_norm:
            importance = importance * self.kv.values().float().abs().sum(-1)  # (B, Hkv, S)
        last = self.seen - 1 - n_recent.view(-1, 1, 1)
        protect = self.slots > last  # (B, Hm, S): the recent window
        if self.sinks:
            r = self.real_index(self.slots)
            protect = protect | ((r >= 0) & (r < self.sinks))
        self.keep_top(importance.masked_fill(protect, torch.inf), torch.clamp(n_heavy + n_recent, min=1))


@dataclass(frozen=True)
class H2O(Scheme):
    """Heavy-Hitter Oracle (H2O, arXiv 2306.14048): accumulated attention plus a recent window.

    Budget: ``heavy`` and ``recent`` are fractions of the prompt length ``L`` fixed at prefill
    (``floor(heavy·L)`` heavy hitters per KV head plus the ``floor(recent·L)`` most recent entries).
    Eviction happens at the end of prefill (the prompt's accumulated attention picks the heavy
    hitters) and at every decode step (one in, one out). Gene phase ``both``.

    Name shorthand: ``h2o-B`` is a total budget ``B`` split equally, i.e. ``h2o-0.2`` is
    ``h2o-0.1-0.1`` — the paper's "20% KV cache budget" — so that every ``-B`` in the catalogue
    is a kept fraction. ``h2o-0.5-0.5`` (or ``h2o-1``) keeps everything.

    With grouped-query attention the query heads of a group sum their votes onto the shared KV
    head, and selection is per KV head (the paper's models have one KV head per query head). The
    reference implementation sums scores over the batch; kvfp keeps them per sequence.
    """

    heavy: float = 0.1
    recent: float = 0.1

    family = "h2o"
    grammar = "h2o-H-R | h2o-B  (heavy and recent fractions of the prompt; h2o-B = h2o-B/2-B/2)"
    pattern = rf"h2o-(?P<heavy>{NUM})(?:-(?P<recent>{NUM}))?"
    summary = "cumulative attention keeps heavy hitters plus recent tokens, evicting as it decodes"
    role = "eviction"

    def __post_init__(self):
        check_fraction("heavy", self.heavy, allow_zero=True)
        check_fraction("recent", self.recent, allow_zero=True)
        if not 0 < self.heavy + self.recent <= 1:
            raise ValueError(f"heavy + recent must be in (0, 1], got {fmt(self.heavy + self.recent)}")

    @property
    def name(self) -> str:
        return f"h2o-{fmt(self.heavy)}-{fmt(self.recent)}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token", "head"), strategy="dynamic",
            importance="attention_cumulative", phase="both",
            params={"budget": round(self.heavy + self.recent, 6), "heavy": self.heavy, "recent": self.recent},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return HeavyHitterLayer(step, self.heavy, self.recent, make_store)

    @classmethod
    def from_match(cls, groups):
        if groups["recent"] is None:
            total = float(groups["heavy"])
            return cls(heavy=total / 2, recent=total / 2)
        return cls(heavy=float(groups["heavy"]), recent=float(groups["recent"]))
