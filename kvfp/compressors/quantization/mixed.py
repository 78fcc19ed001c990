"""``mixed-LO-HI[-fF]``: mixed precision by layer — the layers most sensitive to quantization keep
HI-bit codes, the others LO-bit (symmetric per token, as ``intB-pertoken``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from kvfp.compressors.calibration import cached_fit
from kvfp.compressors.codecs import SymmetricPerToken
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import NOOP_BITS, StorageScheme, check_bits
from kvfp.compressors.stores import CodecStore, ExactStore
from kvfp.kernels.quant_ref import dequantize_symmetric, quantize_symmetric


def fit_layer_sensitivity(kv: list[dict], bits: int) -> dict[str, torch.Tensor]:
    """Per layer, the relative squared error of ``bits``-bit per-token symmetric quantization on
    the calibration keys (post-RoPE, as cached) plus that on the values:
    ``|K - Q(K)|² / |K|² + |V - Q(V)|² / |V|²``. Returns ``sensitivity`` ``(L,)``."""
    out = []
    for layer in kv:
        s = 0.0
        for name in ("k", "v"):
            x = layer[name]
            codes, scale = quantize_symmetric(x, bits)
            err = dequantize_symmetric(codes, scale, torch.float32) - x
            s += float(err.pow(2).sum() / x.pow(2).sum().clamp(min=1e-30))
        out.append(s)
    return {"sensitivity": torch.tensor(out, dtype=torch.float64)}


def high_layers(sensitivity: torch.Tensor, fraction: float) -> set[int]:
    """The ``floor(fraction * L + 0.5)`` most sensitive layers (ties: lower index first)."""
    n = math.floor(fraction * len(sensitivity) + 0.5)
    order = sorted(range(len(sensitivity)), key=lambda i: (-float(sensitivity[i]), i))
    return set(order[:n])


@dataclass(frozen=True)
class MixedPrecision(StorageScheme):
    """Mixed precision by layer: ``floor(fraction * L + 0.5)`` of the L layers keep ``high``-bit
    per-token symmetric codes, the rest ``low``-bit ones (kvfp-tiny, 6 layers: 2 at int8).

    Sensitivity is measured on the calibration text (:func:`fit_layer_sensitivity`): the relative
    reconstruction error that ``low``-bit quantization causes in the layer's keys plus its values;
    the layers where it is largest — the ones with outlier channels or tokens, which per-token
    scales handle worst — get the high precision. Deterministic: cached per model, ties broken by
    layer index.

    Deviation from KVTuner-style searches (which measure attention-output error with real
    queries): the captured calibration holds K/V only, so the proxy is K/V reconstruction error.
    """

    low: int = 4
    high: int = 8
    fraction: float = 0.25

    family = "mixed"
    grammar = "mixed-LO-HI[-fF]  (LO ≤ HI bits in 2..8 or 16; fraction F of layers at HI, default 0.25)"
    pattern = r"mixed-(?P<low>\d+)-(?P<high>\d+)(?:-f(?P<fraction>\d+(?:\.\d+)?))?"
    summary = "mixed precision by layer: sensitive layers at HI bits, the rest at LO"

    def __post_init__(self):
        check_bits(self.low)
        check_bits(self.high)
        if self.low > self.high:
            raise ValueError(f"LO bits ({self.low}) must not exceed HI bits ({self.high})")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"the fraction of high-precision layers must be in [0, 1], not {self.fraction}")

    @property
    def name(self) -> str:
        return f"mixed-{self.low}-{self.high}" + ("" if self.fraction == 0.25 else f"-f{self.fraction:g}")

    @property
    def is_noop(self) -> bool:
        return self.low == self.high == NOOP_BITS

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("layer", "token"), strategy="static",
            compensation=("mixed_precision", "calibration"), phase="decode",
            params={"bits": self.low, "bits_high": self.high, "high_fraction": self.fraction},
        )

    def prepare(self, model):
        if self.low == self.high:
            return None
        return cached_fit(model, f"mixed-sensitivity-int{self.low}",
                          lambda kv: fit_layer_sensitivity(kv, self.low))

    def layer_bits(self, layer_idx: int, num_layers: int, prep: dict | None) -> int:
        if self.low == self.high:
            return self.low
        if prep is None:
            raise ValueError(f"{self.name} needs its calibration (prepare(model))")
        return self.high if layer_idx in high_layers(prep["sensitivity"], self.fraction) else self.low

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        bits = self.layer_bits(layer_idx, num_layers, prep)
        if bits == NOOP_BITS:
            return ExactStore
        codec = SymmetricPerToken(bits)
        return partial(CodecStore, codec, codec)

    @classmethod
    def from_match(cls, groups):
        return cls(low=int(groups["low"]), high=int(groups["high"]),
                   fraction=float(groups["fraction"]) if groups["fraction"] is not None else 0.25)
