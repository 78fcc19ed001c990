"""``none``: the model's own cache at its own dtype."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.exact import ExactLayer
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


@dataclass(frozen=True)
class NoCompression(Scheme):
    family = "none"
    grammar = "none"
    pattern = r"none"
    summary = "the model's own cache at its own dtype"

    @property
    def name(self) -> str:
        return "none"

    @property
    def gene(self) -> Gene:
        return Gene(algorithm="none", phase="both")

    def make_layer(self, layer_idx, num_layers, step):
        return ExactLayer(step)

    @classmethod
    def from_match(cls, groups):
        return cls()
