"""``kivi-B[-gG][-rR]``: KIVI (Liu et al., arXiv 2402.02750), tuning-free asymmetric 2-bit K/V.

Keys are quantized per channel, values per token, both asymmetric (min/max with a float offset)
in groups of G; the most recent tokens stay at full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from kvfp.compressors.codecs import AsymmetricGroups
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.block_stores import ChannelBlocks, SideStore, TokenResidual
from kvfp.compressors.quantization.common import StorageScheme, check_bits, check_positive
from kvfp.compressors.stores import ExactStore


def kivi_store(bits: int, group: int, residual: int) -> SideStore:
    return SideStore(ChannelBlocks(bits, group, residual), TokenResidual(AsymmetricGroups(bits, group), residual))


@dataclass(frozen=True)
class Kivi(StorageScheme):
    """KIVI's cache, as in the authors' reference implementation.

    * Keys: full precision until ``residual`` (R) of them have accumulated, then the block of R is
      quantized per channel, in groups of ``group`` (G) consecutive tokens per channel (one
      (scale, mn) per channel per group). A prefill of L tokens quantizes its first
      ``L - L mod R`` keys and keeps the rest as the residual.
    * Values: per token, in groups of G channels along head_dim; the R most recent values stay at
      full precision and the oldest is quantized whenever one more arrives (prefill: all but the
      last R are quantized).
    * Attention at the step that completes a key block still reads it at full precision (KIVI
      quantizes after attending); prefill attends exactly.

    Deviation: scales and offsets are kept in float32 (KIVI keeps them in the model's dtype). G
    larger than head_dim is not supported for values (KIVI requires it to divide head_dim too).
    """

    bits: int = 2
    group: int = 32
    residual: int = 128

    family = "kivi"
    grammar = "kivi-B[-gG][-rR]  (B in 2..8, 16 = model precision; group G=32, residual R=128, R % G == 0)"
    pattern = r"kivi-(?P<bits>\d+)(?:-g(?P<group>\d+))?(?:-r(?P<residual>\d+))?"
    summary = "KIVI: keys per channel, values per token, full-precision residual flushed in blocks"

    def __post_init__(self):
        check_bits(self.bits)
        check_positive(self.group, "group size")
        check_positive(self.residual, "residual length")
        if self.residual % self.group:
            raise ValueError(f"residual R={self.residual} must be a multiple of the group size G={self.group}")

    @property
    def name(self) -> str:
        g = "" if self.group == 32 else f"-g{self.group}"
        r = "" if self.residual == 128 else f"-r{self.residual}"
        return f"kivi-{self.bits}{g}{r}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("channel", "token", "group"), strategy="dynamic",
            compensation=("zero_point", "residual_window"), phase="decode",
            params={"bits": self.bits, "group_size": self.group, "residual": self.residual},
        )

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        if self.is_noop:
            return ExactStore
        return partial(kivi_store, self.bits, self.group, self.residual)

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]), group=int(groups["group"] or 32),
                   residual=int(groups["residual"] or 128))

    @classmethod
    def canonical(cls):
        return [cls(2), cls(4)]
