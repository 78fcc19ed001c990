"""Per-token symmetric integer K/V with a clipped range: ``intB-pertoken-mse`` (the clip ratio
that minimises each token's squared error) and ``intB-pertoken-qQ`` (clip at a calibrated
quantile of |x|)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.calibration import cached_fit
from kvfp.compressors.codecs import MSE_RATIOS, ClippedPerToken, MSEClippedPerToken
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme, check_bits


@dataclass(frozen=True)
class IntPerTokenMSE(StorageScheme):
    """Symmetric per-token codes whose range is ``r * absmax``, with ``r`` chosen per token and KV
    head from 1.00, 0.95 … 0.50 to minimise that token's squared reconstruction error (ties to
    the larger ratio). Values beyond the range saturate. Scale float32 per token."""

    bits: int = 4

    family = "int-pertoken-mse"
    grammar = "intB-pertoken-mse  (B in 2..8, 16 = model precision)"
    pattern = r"int(?P<bits>\d+)-pertoken-mse"
    summary = "per-token symmetric codes with the MSE-optimal clip ratio"

    def __post_init__(self):
        check_bits(self.bits)

    @property
    def name(self) -> str:
        return f"int{self.bits}-pertoken-mse"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("token",), strategy="dynamic",
            compensation=("clip_mse",), phase="decode",
            params={"bits": self.bits, "clip_ratio_min": min(MSE_RATIOS)},
        )

    def codecs(self, layer_idx, num_layers, prep):
        codec = MSEClippedPerToken(self.bits)
        return codec, codec

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]))


def fit_quantile_clips(kv: list[dict], quantile: float) -> dict[str, torch.Tensor]:
    """Per layer and KV head, the ``quantile`` of |x| over every calibration token and channel of
    that head (keys post-RoPE, as cached). Returns ``k_clip``, ``v_clip`` ``(L, Hkv)``."""

    def clips(name):
        out = []
        for layer in kv:
            x = layer[name].abs().transpose(0, 1).reshape(layer[name].shape[1], -1)  # (H, N*T*D)
            out.append(torch.quantile(x, quantile, dim=1))
        return torch.stack(out)

    return {"k_clip": clips("k"), "v_clip": clips("v")}


def _digits(q: float) -> str:
    return format(q, ".12f").rstrip("0")[2:]


@dataclass(frozen=True)
class IntPerTokenQuantile(StorageScheme):
    """Symmetric per-token codes whose range is ``min(absmax, c)``, where ``c`` is the ``quantile``
    of |x| for that layer, K or V, and KV head, taken over all calibration tokens and all channels
    of the head (4 × 1024 calibration tokens × head_dim values).

    Why over calibration data and not per token: a token holds only head_dim values (32 on
    kvfp-tiny), so its 99.9% quantile is its own maximum and clips nothing; and a quantile over
    the running context would make a token's codes depend on tokens after it. The calibrated
    threshold clips exactly the rare entries that are larger than 99.9% of what the head
    produces, which per-token absmax scaling would otherwise let stretch the whole token's range.
    ``q999`` reads as 0.999 (the digits after "0.").
    """

    bits: int = 4
    quantile: float = 0.999

    family = "int-pertoken-quantile"
    grammar = "intB-pertoken-qDIGITS  (B in 2..8, 16 = model precision; q999: clip at the 0.999 quantile)"
    pattern = r"int(?P<bits>\d+)-pertoken-q(?P<digits>\d+)"
    summary = "per-token symmetric codes clipped at a calibrated quantile of |x| per head"

    def __post_init__(self):
        check_bits(self.bits)
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"the quantile must lie strictly between 0 and 1, not {self.quantile}")

    @property
    def name(self) -> str:
        return f"int{self.bits}-pertoken-q{_digits(self.quantile)}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("token",), strategy="dynamic",
            compensation=("clip_quantile", "calibration"), phase="decode",
            params={"bits": self.bits, "quantile": self.quantile},
        )

    def prepare(self, model):
        if self.is_noop:
            return None
        key = f"int-pertoken-q{_digits(self.quantile)}"  # the thresholds do not depend on the bits
        return cached_fit(model, key, lambda kv: fit_quantile_clips(kv, self.quantile))

    def codecs(self, layer_idx, num_layers, prep):
        if prep is None:
            raise ValueError(f"{self.name} needs its calibration (prepare(model))")
        k = tuple(float(c) for c in prep["k_clip"][layer_idx])
        v = tuple(float(c) for c in prep["v_clip"][layer_idx])
        return ClippedPerToken(self.bits, k), ClippedPerToken(self.bits, v)

    @classmethod
    def from_match(cls, groups):
        digits = groups["digits"]
        if not digits.strip("0"):
            raise ValueError("the quantile must be above 0 (q999 means 0.999)")
        return cls(bits=int(groups["bits"]), quantile=float("0." + digits))
