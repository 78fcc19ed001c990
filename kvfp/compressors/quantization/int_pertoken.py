"""``intB-pertoken``: symmetric integer K/V, one scale per token per head (LLM.int8() lineage)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from kvfp.compressors.codecs import SymmetricPerToken
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.stored import StoredLayer
from kvfp.compressors.stores import CodecStore


@dataclass(frozen=True)
class IntPerToken(Scheme):
    bits: int = 8

    family = "int-pertoken"
    grammar = "intB-pertoken  (B in 2..8)"
    pattern = r"int(?P<bits>\d+)-pertoken"
    summary = "symmetric integer codes, one absmax scale per token per head over head_dim"
    role = "storage"

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError("bits must be in 2..8")

    @property
    def name(self) -> str:
        return f"int{self.bits}-pertoken"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("token",), strategy="dynamic",
            phase="decode", params={"bits": self.bits},
        )

    def make_store(self, layer_idx, num_layers, prep=None):
        codec = SymmetricPerToken(self.bits)
        return partial(CodecStore, codec, codec)

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return StoredLayer(step, self.make_store(layer_idx, num_layers, prep))

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]))

    @classmethod
    def canonical(cls):
        return [cls(8), cls(4)]
