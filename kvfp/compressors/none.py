"""``none``: the model's own cache at its own dtype."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.stored import StoredLayer


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

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return StoredLayer(step)

    @classmethod
    def from_match(cls, groups):
        return cls()
