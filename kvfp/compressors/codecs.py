"""Token-local encodings of K or V: each token's vector is encoded on its own.

A codec turns ``(B, H, T, D)`` into a dict of tensors whose third axis is ``T`` and back.
``nbytes`` counts what a real kernel keeps: sub-byte codes packed, scales at their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.kernels import dequantize_symmetric, quantize_symmetric


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
        codes, scale = quantize_symmetric(x, self.bits)
        return {"codes": codes, "scale": scale}

    def decode(self, enc, dtype):
        return dequantize_symmetric(enc["codes"], enc["scale"], dtype)

    def nbytes(self, enc):
        return packed_bytes(enc["codes"], self.bits) + plain_bytes(enc["scale"])
