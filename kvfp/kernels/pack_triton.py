"""Triton bit packing (layout and reference: :mod:`kvfp.kernels.pack`).

``pack_tile`` / ``unpack_tile`` work on register tiles and are shared by the quantize, dequantize
and fused attention kernels; ``pack_codes`` / ``unpack_codes`` launch them over rows of a tensor.
Import this module only through :mod:`kvfp.kernels.dispatch` (``@triton.jit`` reads
``TRITON_INTERPRET`` when it decorates).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvfp.kernels.pack import check_pack


@triton.jit
def unpack_tile(b, BITS: tl.constexpr, SIGNED: tl.constexpr):
    """Bytes ``(R, C)`` int32 → codes ``(R, C * 8 // BITS)`` int32 in channel order."""
    if BITS == 8:
        c = b
    elif BITS == 4:
        c = tl.interleave(b & 15, (b >> 4) & 15)
    else:
        # channels 4j, 4j+1, 4j+2, 4j+3 sit at bit offsets 0, 2, 4, 6 of byte j
        c = tl.interleave(tl.interleave(b & 3, (b >> 4) & 3), tl.interleave((b >> 2) & 3, (b >> 6) & 3))
    if SIGNED:
        half: tl.constexpr = 1 << (BITS - 1)
        c = tl.where(c >= half, c - 2 * half, c)
    return c


@triton.jit
def pack_tile(c, BITS: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """Codes ``(R, C)`` int32 (two's complement when negative) → bytes ``(R, C * BITS // 8)`` int32."""
    if BITS == 8:
        out = c & 255
    else:
        PER: tl.constexpr = 8 // BITS
        fields = tl.reshape(c & ((1 << BITS) - 1), (R, C // PER, PER))
        shifts = tl.arange(0, PER) * BITS
        out = tl.sum(fields << shifts[None, None, :], axis=2)  # disjoint fields: the sum is their OR
    return out


@triton.jit
def _pack_kernel(C, P, N, D: tl.constexpr, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    PER: tl.constexpr = 8 // BITS
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    c = tl.load(C + rows[:, None] * D + cols[None, :], mask=(rows < N)[:, None] & (cols < D)[None, :], other=0)
    packed = pack_tile(c.to(tl.int32), BITS, BLOCK_R, BLOCK_D)
    j = tl.arange(0, BLOCK_D // PER)
    mask = (rows < N)[:, None] & (j < D // PER)[None, :]
    tl.store(P + rows[:, None] * (D // PER) + j[None, :], packed.to(tl.uint8), mask=mask)


@triton.jit
def _unpack_kernel(P, C, N, D: tl.constexpr, BITS: tl.constexpr, SIGNED: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    PER: tl.constexpr = 8 // BITS
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, BLOCK_D // PER)
    b = tl.load(P + rows[:, None] * (D // PER) + j[None, :], mask=(rows < N)[:, None] & (j < D // PER)[None, :],
                other=0)
    c = unpack_tile(b.to(tl.int32), BITS, SIGNED)
    cols = tl.arange(0, BLOCK_D)
    tl.store(C + rows[:, None] * D + cols[None, :], c.to(C.dtype.element_ty),
             mask=(rows < N)[:, None] & (cols < D)[None, :])


def row_block(width: int, elements: int = 4096) -> int:
    """Rows per program so that a tile holds about ``elements`` values."""
    return max(1, min(128, elements // width))


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.pack.pack_codes`."""
    D = codes.shape[-1]
    per = check_pack(bits, D)
    src = codes.contiguous().view(-1, D)
    out = torch.empty(*codes.shape[:-1], D // per, dtype=torch.uint8, device=codes.device)
    N, block_d = src.shape[0], max(triton.next_power_of_2(D), per)
    block_r = row_block(block_d)
    _pack_kernel[(triton.cdiv(N, block_r),)](src, out, N, D, bits, block_r, block_d)
    return out


def unpack_codes(packed: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.pack.unpack_codes`."""
    per = check_pack(bits, 8)
    D = packed.shape[-1] * per
    src = packed.contiguous().view(-1, packed.shape[-1])
    out = torch.empty(*packed.shape[:-1], D, dtype=torch.int8 if signed else torch.uint8, device=packed.device)
    N, block_d = src.shape[0], max(triton.next_power_of_2(D), per)
    block_r = row_block(block_d)
    _unpack_kernel[(triton.cdiv(N, block_r),)](src, out, N, D, bits, signed, block_r, block_d)
    return out
