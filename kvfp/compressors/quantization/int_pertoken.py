"""Integer K/V with one range per token per head over head_dim.

``intB-pertoken``: symmetric absmax codes (LLM.int8() lineage). ``intB-pertoken-zp``: asymmetric
min/max codes with a zero point (offset), as in KIVI's value cache and HF's quantized cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.codecs import AsymmetricGroups, SymmetricPerToken
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme, check_bits


@dataclass(frozen=True)
class IntPerToken(StorageScheme):
    """Symmetric round-to-nearest codes in ``[-(2**(B-1) - 1), 2**(B-1) - 1]``, scale = absmax / qmax
    (float32) per token per KV head. ``bits = 16`` keeps the model's precision."""

    bits: int = 8

    family = "int-pertoken"
    grammar = "intB-pertoken  (B in 2..8, 16 = model precision)"
    pattern = r"int(?P<bits>\d+)-pertoken"
    summary = "symmetric integer codes, one absmax scale per token per head over head_dim"

    def __post_init__(self):
        check_bits(self.bits)

    @property
    def name(self) -> str:
        return f"int{self.bits}-pertoken"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("token",), strategy="dynamic",
            phase="decode", params={"bits": self.bits},
        )

    def codecs(self, layer_idx, num_layers, prep):
        codec = SymmetricPerToken(self.bits)
        return codec, codec

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]))

    @classmethod
    def canonical(cls):
        return [cls(8), cls(4), cls(2)]


@dataclass(frozen=True)
class IntPerTokenZP(StorageScheme):
    """Asymmetric codes in ``[0, 2**B - 1]``: ``x ≈ code * scale + mn`` with the token's minimum
    ``mn`` and ``scale = (max - min) / (2**B - 1)`` (float32 each) per token per KV head."""

    bits: int = 4

    family = "int-pertoken-zp"
    grammar = "intB-pertoken-zp  (B in 2..8, 16 = model precision)"
    pattern = r"int(?P<bits>\d+)-pertoken-zp"
    summary = "asymmetric integer codes with a zero point, one range per token per head"

    def __post_init__(self):
        check_bits(self.bits)

    @property
    def name(self) -> str:
        return f"int{self.bits}-pertoken-zp"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("token",), strategy="dynamic",
            compensation=("zero_point",), phase="decode", params={"bits": self.bits},
        )

    def codecs(self, layer_idx, num_layers, prep):
        codec = AsymmetricGroups(self.bits)
        return codec, codec

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]))
