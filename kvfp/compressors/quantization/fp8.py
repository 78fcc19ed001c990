"""``fp8-e4m3``, ``fp8-e5m2`` and ``fp8-e4m3-perhead``: FP8 K/V as serving engines store it
(vLLM / SGLang ``kv_cache_dtype="fp8_e4m3" | "fp8_e5m2"``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.calibration import cached_fit
from kvfp.compressors.codecs import FP8
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme
from kvfp.kernels.quant_ref import FP8_DTYPES

EXPONENT_BITS = {"e4m3": 4, "e5m2": 5}


def fit_fp8_head_scales(kv: list[dict], fmt: str) -> dict[str, torch.Tensor]:
    """Per layer and KV head: ``amax / fmax`` of the calibration keys (post-RoPE, as cached) and
    values, over every calibration token and channel. Returns ``k_scale``, ``v_scale`` ``(L, Hkv)``."""
    fmax = torch.finfo(FP8_DTYPES[fmt]).max

    def scales(name):
        amax = torch.stack([layer[name].abs().amax(dim=(0, 2, 3)) for layer in kv])  # (L, H)
        return torch.where(amax > 0, amax / fmax, torch.ones_like(amax))

    return {"k_scale": scales("k"), "v_scale": scales("v")}


@dataclass(frozen=True)
class FP8Cache(StorageScheme):
    """K/V cast to FP8 (``float8_e4m3fn`` or ``float8_e5m2``) after division by a static scale,
    saturating at the format's largest value as serving kernels do.

    * ``fp8-e4m3`` / ``fp8-e5m2``: one scale of 1.0 for every tensor — vLLM's and SGLang's default
      when the checkpoint carries no KV scales.
    * ``-perhead``: one scale per layer and KV head for K and one for V, ``amax / fmax`` over the
      calibration text (vLLM's calibrated ``k_scale``/``v_scale`` are per layer; per head is the
      finer variant some checkpoints carry). Fitted by :func:`fit_fp8_head_scales`, cached.
    """

    fmt: str = "e4m3"
    perhead: bool = False

    family = "fp8"
    grammar = "fp8-FMT[-perhead]  (FMT e4m3 or e5m2; -perhead: calibrated per-KV-head scales)"
    pattern = r"fp8-(?P<fmt>e4m3|e5m2)(?P<perhead>-perhead)?"
    summary = "FP8 K/V with a per-tensor scale of 1.0 or calibrated per-head scales"

    def __post_init__(self):
        if self.fmt not in FP8_DTYPES:
            raise ValueError(f"FP8 format must be one of {sorted(FP8_DTYPES)}, not {self.fmt!r}")

    @property
    def name(self) -> str:
        return f"fp8-{self.fmt}" + ("-perhead" if self.perhead else "")

    @property
    def gene(self) -> Gene:
        e = EXPONENT_BITS[self.fmt]
        return Gene(
            algorithm="quantization", granularity=("head",) if self.perhead else ("tensor",),
            strategy="static", compensation=("calibration",) if self.perhead else (), phase="decode",
            params={"bits": 8, "exponent_bits": e, "mantissa_bits": 7 - e},
        )

    def prepare(self, model):
        if not self.perhead:
            return None
        return cached_fit(model, self.name, lambda kv: fit_fp8_head_scales(kv, self.fmt))

    def codecs(self, layer_idx, num_layers, prep):
        if not self.perhead:
            codec = FP8(self.fmt)
            return codec, codec
        if prep is None:
            raise ValueError(f"{self.name} needs its calibration (prepare(model))")
        k = tuple(float(s) for s in prep["k_scale"][layer_idx])
        v = tuple(float(s) for s in prep["v_scale"][layer_idx])
        return FP8(self.fmt, k), FP8(self.fmt, v)

    @classmethod
    def from_match(cls, groups):
        return cls(fmt=groups["fmt"], perhead=bool(groups["perhead"]))

    @classmethod
    def canonical(cls):
        return [cls("e4m3"), cls("e5m2"), cls("e4m3", perhead=True)]
