"""``intB-groupG``: asymmetric integer K/V in groups of G channels along head_dim (HF quantized
cache style: optimum-quanto's ``axis=0`` groups, without the residual window — see
``intB-gG-rR`` for that)."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.codecs import AsymmetricGroups
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme, check_bits, check_positive


@dataclass(frozen=True)
class IntGroup(StorageScheme):
    """Every token's head_dim is cut into groups of ``group`` consecutive channels, each with its own
    (scale, mn) in float32 and codes in ``[0, 2**B - 1]``. ``group`` must divide head_dim (checked
    when the first K/V arrive); ``group == head_dim`` equals ``intB-pertoken-zp``."""

    bits: int = 4
    group: int = 32

    family = "int-group"
    grammar = "intB-groupG  (B in 2..8, 16 = model precision; G divides head_dim)"
    pattern = r"int(?P<bits>\d+)-group(?P<group>\d+)"
    summary = "asymmetric integer codes with a zero point per group of G channels along head_dim"

    def __post_init__(self):
        check_bits(self.bits)
        check_positive(self.group, "group size")

    @property
    def name(self) -> str:
        return f"int{self.bits}-group{self.group}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("group",), strategy="dynamic",
            compensation=("zero_point",), phase="decode",
            params={"bits": self.bits, "group_size": self.group},
        )

    def codecs(self, layer_idx, num_layers, prep):
        codec = AsymmetricGroups(self.bits, self.group)
        return codec, codec

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]), group=int(groups["group"]))

    @classmethod
    def canonical(cls):
        return [cls(4, 32), cls(2, 32)]
