"""``window-N``: sliding-window attention over the last N tokens (Longformer / Mistral lineage)."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.exact import WindowLayer
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


@dataclass(frozen=True)
class SlidingWindow(Scheme):
    window: int = 512

    family = "window"
    grammar = "window-N  (N ≥ 1: tokens each query attends to, itself included)"
    pattern = r"window-(?P<window>\d+)"
    summary = "only the most recent N tokens"

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

    def make_layer(self, layer_idx, num_layers, step):
        return WindowLayer(step, self.window)

    @classmethod
    def from_match(cls, groups):
        return cls(window=int(groups["window"]))
