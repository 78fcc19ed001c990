"""Token-local encodings of K or V: each token's vector is encoded on its own.

A codec turns ``(B, H, T, D)`` into a dict of tensors whose third axis is ``T`` and back.
``nbytes`` counts what a real kernel keeps: sub-byte codes packed, scales at their dtype.
The symmetric, zero-point and FP8 codecs go through :mod:`kvfp.kernels.dispatch` (Triton on CUDA,
the reference elsewhere; the codes are the same bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.kernels import dispatch, ggml_quants
from kvfp.kernels.quant_layout import QuantLayout
from kvfp.kernels.quant_ref import (
    dequantize_fp4_e2m1,
    dequantize_levels,
    dequantize_symmetric,
    mse_clip,
    quantize_fp4_e2m1,
    quantize_symmetric_clipped,
    quantize_to_levels,
)


class TokenCodec:
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, enc: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self, enc: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError


def packed_bytes(codes: torch.Tensor, bits: int) -> int:
    return codes.numel() * bits // 8


def plain_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class SymmetricPerToken(TokenCodec):
    """Symmetric integer codes, one absmax scale per token over head_dim."""

    bits: int

    def encode(self, x):
        codes, scale, _ = dispatch.quantize(x, QuantLayout.per_token(self.bits))  # scale (B, H, T, 1)
        return {"codes": codes, "scale": scale}

    def decode(self, enc, dtype):
        return dispatch.dequantize(enc["codes"], enc["scale"], None, QuantLayout.per_token(self.bits), dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], self.bits) + plain_bytes(enc["scale"])


def _per_head(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """A per-KV-head (or single) constant as ``(1, H|1, 1, 1)`` float32 on ``x``'s device."""
    t = torch.tensor(values, dtype=torch.float32, device=x.device)
    if len(values) not in (1, x.shape[1]):
        raise ValueError(f"{len(values)} per-head constants for {x.shape[1]} KV heads")
    return t.view(1, -1, 1, 1)


@dataclass(frozen=True)
class AsymmetricGroups(TokenCodec):
    """Asymmetric (zero-point) integer codes per group of ``group`` channels of head_dim (0: the
    whole head_dim, i.e. per token). Scale and minimum are float32 per group."""

    bits: int
    group: int = 0

    def encode(self, x):
        codes, scale, mn = dispatch.quantize(x, QuantLayout.channel_groups(self.bits, self.group))  # (B, H, T, D // G)
        return {"codes": codes, "scale": scale, "mn": mn}

    def decode(self, enc, dtype):
        layout = QuantLayout.channel_groups(self.bits, self.group)
        return dispatch.dequantize(enc["codes"], enc["scale"], enc["mn"], layout, dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], self.bits) + plain_bytes(enc["scale"], enc["mn"])


@dataclass(frozen=True)
class ClippedPerToken(TokenCodec):
    """Symmetric per-token codes whose range is ``min(absmax, clip[h])``: a fixed (calibrated)
    clipping threshold per KV head ``h`` caps each token's absmax scale."""

    bits: int
    clip: tuple[float, ...]

    def encode(self, x):
        amax = x.abs().amax(-1, keepdim=True).float()
        codes, scale = quantize_symmetric_clipped(x, self.bits, torch.minimum(amax, _per_head(self.clip, x)))
        return {"codes": codes, "scale": scale}

    def decode(self, enc, dtype):
        return dequantize_symmetric(enc["codes"], enc["scale"], dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], self.bits) + plain_bytes(enc["scale"]) + 4 * len(self.clip)


MSE_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 1.00, 0.95 … 0.50


@dataclass(frozen=True)
class MSEClippedPerToken(TokenCodec):
    """Symmetric per-token codes with the clip ratio (of the token's absmax) that minimises the
    token's squared error over the grid ``ratios``."""

    bits: int
    ratios: tuple[float, ...] = MSE_RATIOS

    def encode(self, x):
        codes, scale = quantize_symmetric_clipped(x, self.bits, mse_clip(x, self.bits, self.ratios))
        return {"codes": codes, "scale": scale}

    def decode(self, enc, dtype):
        return dequantize_symmetric(enc["codes"], enc["scale"], dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], self.bits) + plain_bytes(enc["scale"])


@dataclass(frozen=True)
class LevelsPerToken(TokenCodec):
    """Per token: ``x / absmax`` rounded to the nearest of a fixed level set on ``[-1, 1]``
    (ascending); codes take ``ceil(log2(len(levels)))`` bits."""

    levels: tuple[float, ...]

    @property
    def bits(self) -> int:
        return max(1, (len(self.levels) - 1).bit_length())

    def encode(self, x):
        amax = x.abs().amax(-1, keepdim=True).float()
        scale = torch.where(amax > 0, amax, torch.ones_like(amax))
        lv = torch.tensor(self.levels, dtype=torch.float32)
        return {"codes": quantize_to_levels(x.float() / scale, lv), "scale": scale}

    def decode(self, enc, dtype):
        lv = torch.tensor(self.levels, dtype=torch.float32)
        return (dequantize_levels(enc["codes"], lv) * enc["scale"]).to(dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], self.bits) + plain_bytes(enc["scale"])


@dataclass(frozen=True)
class FP8(TokenCodec):
    """FP8 codes of ``x / scale`` (``fmt`` ``e4m3`` or ``e5m2``), with one static scale per tensor
    (a 1-tuple) or per KV head. The static scales are counted once per store."""

    fmt: str
    scale: tuple[float, ...] = (1.0,)

    def encode(self, x):
        return {"codes": dispatch.quantize_fp8(x, self.fmt, _per_head(self.scale, x))}

    def decode(self, enc, dtype):
        codes = enc["codes"]
        return dispatch.dequantize_fp8(codes, self.fmt, _per_head(self.scale, codes), dtype)

    def nbytes(self, enc):
        return plain_bytes(enc["codes"]) + 4 * len(self.scale)


@dataclass(frozen=True)
class FP4Blocks(TokenCodec):
    """NVFP4-style FP4 (E2M1) codes in blocks of ``block`` channels, one FP8 E4M3 scale per block."""

    block: int = 16

    def encode(self, x):
        codes, scale = quantize_fp4_e2m1(x, self.block)
        return {"codes": codes, "scale": scale}

    def decode(self, enc, dtype):
        return dequantize_fp4_e2m1(enc["codes"], enc["scale"], dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], 4) + plain_bytes(enc["scale"])


@dataclass(frozen=True)
class GGMLBlocks(TokenCodec):
    """One of ggml's block formats (``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``iq4_nl``):
    blocks of 32 channels of head_dim, each with codes and an fp16 scale (and minimum), as
    ggml's reference quantizer writes them (:mod:`kvfp.kernels.ggml_quants`, bit for bit).
    Decoded in float32, then cast to the model's dtype. ``nbytes`` is ggml's block size times the
    number of blocks (q8_0: 34 bytes per 32 values, q4_0 and iq4_nl 18, q4_1 20, q5_0 22, q5_1 24)."""

    qtype: str

    def __post_init__(self):
        if self.qtype not in ggml_quants.BLOCK_BYTES:
            raise ValueError(f"unknown ggml type {self.qtype!r}")

    def encode(self, x):
        return ggml_quants.quantize(x, self.qtype)  # codes (B, H, T, D), d/m (B, H, T, D // 32)

    def decode(self, enc, dtype):
        return ggml_quants.dequantize(enc, self.qtype, dtype)

    def nbytes(self, enc):
        return enc["codes"].numel() // ggml_quants.QK * ggml_quants.BLOCK_BYTES[self.qtype]


@dataclass(frozen=True)
class Half(TokenCodec):
    """Values rounded to float16 (nearest, ties to even; out of range becomes ±inf, as a cast in
    any engine), decoded back to the model's dtype."""

    def encode(self, x):
        return {"codes": x.to(torch.float16)}

    def decode(self, enc, dtype):
        return enc["codes"].to(dtype)

    def nbytes(self, enc):
        return plain_bytes(enc["codes"])
