"""``tova-B``: keep the tokens the latest query attends to most (TOVA, arXiv 2401.06104)."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.eviction.base import NUM, EvictionLayer, check_fraction, fmt
from kvfp.compressors.eviction.scores import budget_tokens
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


class LastQueryLayer(EvictionLayer):
    """After every forward, keeps the ``floor(budget·L)`` entries (``L`` the prompt length) to
    which this forward's last query gave the most attention, averaged over all query heads of the
    layer, so every head keeps the same entries. ``budget ≥ 1`` never evicts."""

    wants_scores = True

    def __init__(self, step, budget: float, make_store=None):
        super().__init__(step, make_store)
        self.budget = budget
        if budget >= 1:
            self.wants_scores = False

    def observe(self, probs):
        last = probs[:, :, -1, :].float().mean(1, keepdim=True)  # (B, 1, S)
        self.keep_top(last, budget_tokens(self.budget, self.prompt_len))


@dataclass(frozen=True)
class TOVA(Scheme):
    """Token Omission Via Attention (Oren et al., arXiv 2401.06104).

    Budget: a fraction ``B`` of the prompt length ``L``, fixed at prefill: ``floor(B·L)`` entries
    per layer. At the end of prefill the prompt's last query picks them; at every decode step the
    new entry joins and the one the current query attends to least (averaged over the layer's
    heads, as the paper does) leaves — possibly the new entry itself. Gene phase ``both``.
    """

    budget: float = 0.5

    family = "tova"
    grammar = "tova-B  (B in (0, 1]: kept fraction of the prompt)"
    pattern = rf"tova-(?P<budget>{NUM})"
    summary = "keep the tokens the latest query attends to most (head-averaged per layer)"
    role = "eviction"

    def __post_init__(self):
        check_fraction("budget", self.budget)

    @property
    def name(self) -> str:
        return f"tova-{fmt(self.budget)}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token", "layer"), strategy="dynamic",
            importance="attention_last", phase="both", params={"budget": self.budget},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return LastQueryLayer(step, self.budget, make_store)

    @classmethod
    def from_match(cls, groups):
        return cls(budget=float(groups["budget"]))
