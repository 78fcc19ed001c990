"""``window-N``: sliding-window attention over the last N tokens (Longformer / Mistral lineage)."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.stored import StoredLayer


class WindowLayer(StoredLayer):
    """Each query attends to itself and the ``window - 1`` slots before it.

    The cache holds the last ``window`` entries between steps. During a multi-token forward
    (prefill) the band applies inside the chunk too, so a query never sees further back than it
    would when decoding token by token (Mistral-style sliding-window attention).
    """

    def __init__(self, step, window: int, make_store=None):
        super().__init__(step, *([make_store] if make_store else []))
        self.window = window

    def after_store(self, k, v):
        self.keep_last(self.window)

    def band(self, q_slots, k_slots):
        return k_slots > q_slots - self.window


@dataclass(frozen=True)
class SlidingWindow(Scheme):
    window: int = 512

    family = "window"
    grammar = "window-N  (N ≥ 1: tokens each query attends to, itself included)"
    pattern = r"window-(?P<window>\d+)"
    summary = "only the most recent N tokens"
    role = "eviction"

    def __post_init__(self):
        if self.window < 1:
            raise ValueError("window must be at least 1")

    @property
    def name(self) -> str:
        return f"window-{self.window}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token",), strategy="static",
            importance="recency", phase="both", params={"window": self.window},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return WindowLayer(step, self.window, make_store)

    @classmethod
    def from_match(cls, groups):
        return cls(window=int(groups["window"]))
