"""``intB-perchannel[-tT]``: per-channel integer K/V over blocks of T tokens (KIVI's key
quantization applied to K and V alike; HF quanto's ``axis=-1`` lineage)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.block_stores import ChannelBlocks, SideStore
from kvfp.compressors.quantization.common import StorageScheme, check_bits, check_positive
from kvfp.compressors.stores import ExactStore


def perchannel_store(bits: int, block: int) -> SideStore:
    return SideStore(ChannelBlocks(bits, block, block), ChannelBlocks(bits, block, block))


@dataclass(frozen=True)
class IntPerChannel(StorageScheme):
    """Asymmetric codes with one (scale, mn) per channel per block of ``block`` consecutive tokens
    of a head, for K and for V. The tokens of a block that is not yet full stay at full precision
    (and are counted so); a block is quantized once its last token has arrived and been attended
    at full precision.

    Prefill follows the prefill-exact rule; its complete blocks are quantized when it is stored.
    """

    bits: int = 4
    block: int = 32

    family = "int-perchannel"
    grammar = "intB-perchannel[-tT]  (B in 2..8, 16 = model precision; T tokens per block, default 32)"
    pattern = r"int(?P<bits>\d+)-perchannel(?:-t(?P<block>\d+))?"
    summary = "asymmetric integer codes, one range per channel per block of T tokens"

    def __post_init__(self):
        check_bits(self.bits)
        check_positive(self.block, "block length")

    @property
    def name(self) -> str:
        return f"int{self.bits}-perchannel" + ("" if self.block == 32 else f"-t{self.block}")

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("channel", "block"), strategy="dynamic",
            compensation=("zero_point", "residual_window"), phase="decode",
            params={"bits": self.bits, "block": self.block},
        )

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        if self.is_noop:
            return ExactStore
        return partial(perchannel_store, self.bits, self.block)

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]), block=int(groups["block"] or 32))
