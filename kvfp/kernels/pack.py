"""Bit packing of integer codes along the last axis: the reference for
:mod:`kvfp.kernels.pack_triton`.

``8 // bits`` codes share a byte: channel ``d`` lives in byte ``d // per`` at bit offset
``(d % per) * bits`` (low bits first), so a byte holds consecutive channels and a row of ``D``
codes packs into ``D * bits // 8`` bytes. Signed (symmetric) codes are stored as ``bits``-bit two's
complement and sign-extended on unpacking; 8-bit codes are their own bytes.
"""

from __future__ import annotations

import torch

PACK_BITS = (2, 4, 8)


def check_pack(bits: int, d: int) -> int:
    """Codes per byte for ``bits``-bit codes in rows of ``d``; ValueError where they don't pack."""
    if bits not in PACK_BITS:
        raise ValueError(f"codes pack at {PACK_BITS} bits, not {bits}")
    per = 8 // bits
    if d % per:
        raise ValueError(f"a row of {d} codes does not fill whole bytes at {bits} bits")
    return per


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes`` ``(…, D)`` (int8 two's complement or uint8, only the low ``bits`` bits kept)
    into ``(…, D * bits // 8)`` uint8."""
    per = check_pack(bits, codes.shape[-1])
    if per == 1:
        return codes.contiguous().view(torch.uint8)
    low = codes.to(torch.int32) & ((1 << bits) - 1)
    low = low.reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    return (low << shifts).sum(-1).to(torch.uint8)  # the fields are disjoint: the sum is their OR


def unpack_codes(packed: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``(…, D * bits // 8)`` uint8 → ``(…, D)`` int8 (``signed``)
    or uint8."""
    per = check_pack(bits, 8)
    if per == 1:
        return packed.contiguous().view(torch.int8 if signed else torch.uint8)
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    fields = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # (…, n, per)
    codes = fields.reshape(*packed.shape[:-1], packed.shape[-1] * per)
    if signed:
        half = 1 << (bits - 1)
        return torch.where(codes >= half, codes - 2 * half, codes).to(torch.int8)
    return codes.to(torch.uint8)
