"""``fp4-e2m1-bB``: NVFP4-style FP4 K/V — E2M1 values in blocks of B channels, each block with
its own FP8 (E4M3) scale."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.codecs import FP4Blocks
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme, check_positive


@dataclass(frozen=True)
class FP4E2M1(StorageScheme):
    """Every block of ``block`` consecutive channels of a token's head_dim gets the scale
    ``absmax / 6`` rounded to FP8 E4M3; values divided by it round to the nearest E2M1 value
    (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, ties to even), saturating at ±6.

    Deviation from NVFP4: no second-level per-tensor FP32 scale (equivalently, it is 1.0, as FP8
    caches default to), so a block whose ``absmax / 6`` is below E4M3's smallest subnormal
    (2**-9) is flushed to zero. ``block`` must divide head_dim.
    """

    block: int = 16

    family = "fp4"
    grammar = "fp4-e2m1-bB  (B channels per block sharing one FP8 E4M3 scale; B divides head_dim)"
    pattern = r"fp4-e2m1(?:-b(?P<block>\d+))?"
    summary = "FP4 (E2M1) values in blocks along head_dim, one FP8 scale per block"

    def __post_init__(self):
        check_positive(self.block, "block size")

    @property
    def name(self) -> str:
        return f"fp4-e2m1-b{self.block}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("block",), strategy="dynamic", phase="decode",
            params={"bits": 4, "exponent_bits": 2, "mantissa_bits": 1, "group_size": self.block},
        )

    def codecs(self, layer_idx, num_layers, prep):
        codec = FP4Blocks(self.block)
        return codec, codec

    @classmethod
    def from_match(cls, groups):
        return cls(block=int(groups["block"] or 16))
