"""``intB-gG-rR``: transformers' ``QuantizedCache`` (``QuantizedLayer.update``), whose whole history
is re-quantized whenever its full-precision residual fills."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.block_stores import Requant, SideStore
from kvfp.compressors.quantization.common import StorageScheme, check_bits, check_positive
from kvfp.compressors.stores import ExactStore


def requant_store(bits: int, group: int, residual: int) -> SideStore:
    return SideStore(Requant(bits, group, residual), Requant(bits, group, residual))


@dataclass(frozen=True)
class HFRequant(StorageScheme):
    """HF residual re-quantization (transformers ``QuantizedLayer``; defaults are HF's: 4 bits,
    ``q_group_size=64``, ``residual_length=128``, ``axis_key = axis_value = 0``).

    * Prefill: attention sees the exact K/V; the whole prefill is quantized, with no residual.
    * Decode: attention sees the dequantized history, the full-precision residual and the new
      token at full precision. When ``residual + new >= R`` the concatenation of all three is
      quantized again from scratch (so old entries are re-quantized from their dequantized
      values) and the residual empties; otherwise the new token joins the residual.
    * Groups: optimum-quanto's default ``axis=0`` — quanto reshapes the ``(B, H, T, D)`` tensor to
      ``(-1, G)``, so a group is G consecutive elements in memory order: along head_dim within a
      token when G <= head_dim, and over G / head_dim consecutive tokens of a head when G is
      larger (kvfp-tiny: head_dim 32, so ``int4-g64-r128`` pairs adjacent tokens). Codes are
      asymmetric min/max (quanto's ``MaxOptimizer``) in ``[0, 2**B - 1]``.

    Our own quantizer, not quanto: the offset is a float minimum rather than quanto's shift, and a
    shape whose element count is not a multiple of G is padded by repeating the last element
    (quanto raises). G must divide head_dim or be a multiple of it. HF's own precision rule
    replaces ``StoredLayer``'s (they agree at prefill; at decode the new token is exact here).
    """

    bits: int = 4
    group: int = 64
    residual: int = 128

    family = "hf-requant"
    grammar = "intB-gG-rR  (HF QuantizedCache: B in 2..8, 16 = model precision; G group, R residual)"
    pattern = r"int(?P<bits>\d+)-g(?P<group>\d+)-r(?P<residual>\d+)"
    summary = "HF quantized cache: history re-quantized whenever the full-precision residual fills"

    def __post_init__(self):
        check_bits(self.bits)
        check_positive(self.group, "group size")
        check_positive(self.residual, "residual length")

    @property
    def name(self) -> str:
        return f"int{self.bits}-g{self.group}-r{self.residual}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("group",), strategy="dynamic",
            compensation=("zero_point", "residual_window"), phase="decode",
            params={"bits": self.bits, "group_size": self.group, "residual": self.residual},
        )

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        if self.is_noop:
            return ExactStore
        return partial(requant_store, self.bits, self.group, self.residual)

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]), group=int(groups["group"]), residual=int(groups["residual"]))
