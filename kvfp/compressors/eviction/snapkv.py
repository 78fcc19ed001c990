"""``snapkv-B``: prefill-time selection by the observation window's pooled attention (SnapKV,
arXiv 2404.14469)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kvfp.compressors.eviction.base import NUM, EvictionLayer, check_fraction, fmt
from kvfp.compressors.eviction.scores import budget_tokens, window_votes
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme

WINDOW, KERNEL = 32, 5  # the official implementation's defaults (window_size, kernel_size, avgpool)


class ObservationWindowLayer(EvictionLayer):
    """At the end of prefill, keeps per KV head the last ``window`` prompt entries plus the
    prefix entries best voted for by those ``window`` queries (:func:`window_votes`), up to
    ``budget(prompt_len)`` entries in all; decode then appends without evicting.

    ``budget`` maps the prompt lengths ``(B,)`` to the kept counts ``(B,)`` (window included).
    Scores are needed only at prefill: afterwards the layer runs plain attention.
    """

    wants_scores = True

    def __init__(self, step, budget: Callable[[torch.Tensor], torch.Tensor], window: int, kernel: int,
                 make_store=None):
        super().__init__(step, make_store)
        self.budget, self.window, self.kernel = budget, window, kernel

    def clear(self):
        super().clear()
        self.wants_scores = True  # until the prompt has been compressed

    def observe(self, probs):
        self.wants_scores = False
        B, _, _, S = probs.shape
        n = self.budget(self.prompt_len)  # (B,)
        if bool((n >= self.prompt_len).all()):
            return  # the budget holds the whole prompt
        w = min(self.window, S)
        votes = window_votes(probs, self.kv.keys().shape[1], w, self.kernel)  # (B, Hkv, S - w)
        # the window always stays; were the budget smaller than it, its latest entries win
        inside = (w + 1 + torch.arange(w, device=votes.device, dtype=votes.dtype)).expand(*votes.shape[:2], w)
        self.keep_top(torch.cat([votes, inside], dim=-1), n)


@dataclass(frozen=True)
class SnapKV(Scheme):
    """SnapKV (Li et al., arXiv 2404.14469): the prompt's last ``window`` queries vote for the
    prefix entries they attend to; votes are smoothed by average pooling and each KV head keeps
    its top entries plus the window.

    Budget: a fraction ``B`` of the prompt length ``L``: ``floor(B·L)`` entries per KV head, the
    ``window`` last prompt entries included, selected once at the end of prefill. Decode appends
    every new entry (nothing is evicted after prefill). Gene phase ``prefill``.

    Defaults follow the official code: window 32, average pooling of width 5 (zero-padded,
    stride 1). With grouped-query attention the votes of a group's query heads are averaged onto
    their KV head (the official code targets one KV head per query head).
    """

    budget: float = 0.5
    window: int = WINDOW
    kernel: int = KERNEL

    family = "snapkv"
    grammar = "snapkv-B[-wW][-kK]  (B in (0, 1]: kept fraction; W observation window; K odd pooling width)"
    pattern = rf"snapkv-(?P<budget>{NUM})(?:-w(?P<window>\d+))?(?:-k(?P<kernel>\d+))?"
    summary = "prefill-time selection by the last queries' pooled attention"
    role = "eviction"

    def __post_init__(self):
        check_fraction("budget", self.budget)
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError("kernel (pooling width) must be odd and at least 1")

    def _suffix(self) -> str:
        return (("" if self.window == WINDOW else f"-w{self.window}")
                + ("" if self.kernel == KERNEL else f"-k{self.kernel}"))

    @property
    def name(self) -> str:
        return f"{self.family}-{fmt(self.budget)}{self._suffix()}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token", "head"), strategy="dynamic",
            importance="attention_window", phase="prefill",
            params={"budget": self.budget, "window": self.window, "kernel": self.kernel},
        )

    def layer_budget(self, layer_idx: int, num_layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda prompt_len: budget_tokens(self.budget, prompt_len)

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return ObservationWindowLayer(step, self.layer_budget(layer_idx, num_layers), self.window,
                                      self.kernel, make_store)

    @classmethod
    def from_match(cls, groups):
        return cls(budget=float(groups["budget"]),
                   window=WINDOW if groups["window"] is None else int(groups["window"]),
                   kernel=KERNEL if groups["kernel"] is None else int(groups["kernel"]))
