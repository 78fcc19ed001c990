"""Quantized K/V layouts shared by the kernels: which elements share a scale, and the reference
quantize/dequantize of each (the specification :mod:`kvfp.kernels.quant_triton` is tested against).

A ``(B, H, T, D)`` tensor is cut into groups of ``token_group`` tokens × ``channel_group``
channels, each with one float32 scale (and, with a zero point, one float32 minimum):

* per token over head_dim: ``token_group = 1``, ``channel_group = D`` (written 0);
* groups along head_dim (KIVI's values, ``intB-groupG``): ``token_group = 1``, ``channel_group = G``;
* per channel over blocks of tokens (KIVI's keys, ``intB-perchannel``): ``token_group = T_b``,
  ``channel_group = 1``.

Scales are ``(B, H, T // token_group, D // channel_group)``. Symmetric codes are int8 in
``±(2**(bits-1) - 1)`` (:func:`~kvfp.kernels.quant_ref.quantize_symmetric`), zero-point codes uint8
in ``[0, 2**bits - 1]`` (:func:`~kvfp.kernels.quant_ref.quantize_asymmetric`); the groupings reuse
those references, so codes here are the schemes' codes bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.kernels.pack import check_pack, pack_codes, unpack_codes
from kvfp.kernels.quant_ref import quantize_asymmetric, quantize_symmetric


@dataclass(frozen=True)
class QuantLayout:
    """How K or V is quantized; see the module docstring. ``channel_group = 0``: all of head_dim."""

    bits: int
    zero_point: bool = False
    token_group: int = 1
    channel_group: int = 0

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be in 2..8, not {self.bits}")
        if self.token_group < 1 or self.channel_group < 0:
            raise ValueError(f"group sizes must be positive, not {self.token_group} x {self.channel_group}")
        if self.token_group > 1 and self.channel_group != 1:
            raise ValueError("a group spanning several tokens must be one channel wide (per-channel blocks)")

    @classmethod
    def per_token(cls, bits: int, zero_point: bool = False) -> QuantLayout:
        return cls(bits, zero_point)

    @classmethod
    def channel_groups(cls, bits: int, group: int, zero_point: bool = True) -> QuantLayout:
        return cls(bits, zero_point, 1, group)

    @classmethod
    def channel_blocks(cls, bits: int, block: int, zero_point: bool = True) -> QuantLayout:
        return cls(bits, zero_point, block, 1)

    def groups(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
        """``(token_group, channel_group)`` for a ``(…, T, D)`` tensor, checked to divide it."""
        T, D = shape[-2], shape[-1]
        tg, dg = self.token_group, self.channel_group or D
        if D % dg:
            raise ValueError(f"group size {dg} does not divide head_dim {D}")
        if T % tg:
            raise ValueError(f"token block {tg} does not divide the {T} tokens to quantize")
        return tg, dg


def quantize(x: torch.Tensor, layout: QuantLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``x`` ``(…, T, D)``; returns unpacked codes (shape of ``x``), scale and minimum
    ``(…, T // tg, D // dg)`` float32 (minimum None without a zero point)."""
    tg, dg = layout.groups(x.shape)
    *lead, T, D = x.shape
    if tg == 1:
        xg, dim = x.reshape(*lead, T, D // dg, dg), -1
    else:
        xg, dim = x.reshape(*lead, T // tg, tg, D), -2
    if layout.zero_point:
        codes, scale, mn = quantize_asymmetric(xg, layout.bits, dim)
        mn = mn.squeeze(dim)
    else:
        codes, scale = quantize_symmetric(xg, layout.bits, dim)
        mn = None
    return codes.reshape(x.shape), scale.squeeze(dim), mn


def dequantize(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor | None, layout: QuantLayout,
               dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``codes * scale (+ mn)`` in float32, returned in ``dtype``."""
    tg, dg = layout.groups(codes.shape)
    *lead, T, D = codes.shape
    if tg == 1:
        c, s = codes.reshape(*lead, T, D // dg, dg), scale.unsqueeze(-1)
        m = None if mn is None else mn.unsqueeze(-1)
    else:
        c, s = codes.reshape(*lead, T // tg, tg, D), scale.unsqueeze(-2)
        m = None if mn is None else mn.unsqueeze(-2)
    out = c.float() * s
    if m is not None:
        out = out + m
    return out.to(dtype).reshape(codes.shape)


@dataclass
class QuantTensor:
    """A quantized ``(B, H, T, D)`` K or V as the fused kernels read it: codes packed along
    head_dim ``(B, H, T, D * bits // 8)`` uint8 (:mod:`kvfp.kernels.pack`), ``scale`` and ``mn``
    ``(B, H, T // tg, D // dg)`` float32 (``mn`` None without a zero point)."""

    codes: torch.Tensor
    scale: torch.Tensor
    mn: torch.Tensor | None
    layout: QuantLayout
    head_dim: int

    def __post_init__(self):
        check_pack(self.layout.bits, self.head_dim)
        tg, dg = self.layout.groups((self.codes.shape[-2], self.head_dim))
        want = (*self.codes.shape[:-2], self.codes.shape[-2] // tg, self.head_dim // dg)
        if tuple(self.scale.shape) != want or (self.mn is not None and tuple(self.mn.shape) != want):
            raise ValueError(f"scales of shape {tuple(self.scale.shape)} do not fit codes {tuple(self.codes.shape)}")
        if (self.mn is not None) != self.layout.zero_point:
            raise ValueError("a minimum is kept exactly when the layout has a zero point")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (*self.codes.shape[:-1], self.head_dim)

    @classmethod
    def from_codes(cls, codes, scale, mn, layout: QuantLayout) -> QuantTensor:
        """Pack unpacked ``codes`` ``(B, H, T, D)``."""
        return cls(pack_codes(codes, layout.bits), scale, mn, layout, codes.shape[-1])

    def unpacked(self) -> torch.Tensor:
        return unpack_codes(self.codes, self.layout.bits, signed=not self.layout.zero_point)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The reference dequantization ``(B, H, T, D)`` in ``dtype``."""
        return dequantize(self.unpacked(), self.scale, self.mn, self.layout, dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.mn) if t is not None)


def quantize_packed(x: torch.Tensor, layout: QuantLayout) -> QuantTensor:
    """Reference quantize-and-pack of ``x`` ``(B, H, T, D)``."""
    return QuantTensor.from_codes(*quantize(x, layout), layout)
