"""``knorm-B``: keep the keys with the smallest L2 norm (Devoto et al., arXiv 2406.11430)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.eviction.base import NUM, EvictionLayer, check_fraction, fmt
from kvfp.compressors.eviction.scores import budget_tokens
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


def key_norm_scores(keys: torch.Tensor) -> torch.Tensor:
    """Importance of each entry: minus its key's L2 norm. ``(B, Hkv, S, D)`` → ``(B, Hkv, S)``.

    RoPE rotates pairs of channels, so the norm is the same before and after it."""
    return -keys.float().norm(dim=-1)


class KeyNormLayer(EvictionLayer):
    """After every write, keeps per KV head the ``floor(budget·L)`` entries whose stored keys have
    the smallest L2 norm (``L`` the prompt length). No attention scores are needed, so attention
    stays on the model's fast path. ``budget ≥ 1`` never evicts."""

    def __init__(self, step, budget: float, make_store=None):
        super().__init__(step, make_store)
        self.budget = budget

    def after_store(self, k, v):
        if self.budget < 1:
            self.keep_top(key_norm_scores(self.kv.keys()), budget_tokens(self.budget, self.prompt_len))


@dataclass(frozen=True)
class KeyNorm(Scheme):
    """L2-norm KV cache compression (Devoto et al., arXiv 2406.11430): low key norm predicts high
    attention, so keep the lowest-norm keys.

    Budget: a fraction ``B`` of the prompt length ``L``, fixed at prefill: ``floor(B·L)`` entries
    per KV head. Eviction at the end of prefill (the prompt attends in full first) and at every
    decode step: the new entry joins, the highest-norm one leaves. Gene phase ``both``.

    Deviations: the authors' scripts leave layers 0 and 1 uncompressed and prune to a ratio of
    the current length; kvfp compresses every layer (as kvpress's KnormPress) and holds the
    prompt-fixed budget, so the budget is the same in every layer and at every step.
    """

    budget: float = 0.5

    family = "knorm"
    grammar = "knorm-B  (B in (0, 1]: kept fraction of the prompt)"
    pattern = rf"knorm-(?P<budget>{NUM})"
    summary = "keep keys with the smallest L2 norm"
    role = "eviction"

    def __post_init__(self):
        check_fraction("budget", self.budget)

    @property
    def name(self) -> str:
        return f"knorm-{fmt(self.budget)}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token", "head"), strategy="dynamic",
            importance="key_norm", phase="both", params={"budget": self.budget},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return KeyNormLayer(step, self.budget, make_store)

    @classmethod
    def from_match(cls, groups):
        return cls(budget=float(groups["budget"]))
