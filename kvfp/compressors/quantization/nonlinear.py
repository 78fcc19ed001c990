"""``intB-log[-oN]``: per-token K/V on a log-domain (non-uniform) level set."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.codecs import LevelsPerToken
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme, check_bits, check_positive
from kvfp.kernels.quant_ref import log_levels


@dataclass(frozen=True)
class IntLog(StorageScheme):
    """Each token (per KV head) is divided by its absmax and rounded (nearest, in the linear domain)
    to the level set ``{0} ∪ {±2**(-k/N) : k = 0 … 2**(B-1) - 2}`` (:func:`log_levels`; N =
    ``per_octave`` levels per factor of two). For ``int4-log`` (N = 2): 0, ±1, ±0.707, ±0.5,
    ±0.354, ±0.25, ±0.177, ±0.125 — 15 levels in 4-bit codes, finer near zero than the uniform
    int4 grid and coarser near the absmax. The scale is float32 per token.
    """

    bits: int = 4
    per_octave: int = 2

    family = "int-log"
    grammar = "intB-log[-oN]  (B in 2..8, 16 = model precision; N levels per octave, default 2)"
    pattern = r"int(?P<bits>\d+)-log(?:-o(?P<per_octave>\d+))?"
    summary = "per-token codes on log-domain levels (absmax-normalised)"

    def __post_init__(self):
        check_bits(self.bits)
        check_positive(self.per_octave, "levels per octave")

    @property
    def name(self) -> str:
        return f"int{self.bits}-log" + ("" if self.per_octave == 2 else f"-o{self.per_octave}")

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("token",), strategy="dynamic",
            compensation=("nonlinear",), phase="decode",
            params={"bits": self.bits, "levels_per_octave": self.per_octave},
        )

    def codecs(self, layer_idx, num_layers, prep):
        codec = LevelsPerToken(tuple(log_levels(self.bits, self.per_octave).tolist()))
        return codec, codec

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]), per_octave=int(groups["per_octave"] or 2))
