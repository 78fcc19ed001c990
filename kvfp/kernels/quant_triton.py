"""Triton quantize / dequantize kernels for the layouts of :mod:`kvfp.kernels.quant_layout` and
FP8 casts with a scale; the references are :mod:`kvfp.kernels.quant_layout` and
:mod:`kvfp.kernels.quant_ref`.

Codes equal the reference's bit for bit:

* ``torch.round`` rounds half to even. ``round_half_even`` adds and subtracts ``1.5 * 2**23``: the
  float32 sum has no fraction bits left, so IEEE round-to-nearest-even of that addition *is* the
  rounding (exact for ``|y| < 2**22``; codes stay below 256). libdevice's ``rint`` would do the
  same on CUDA but does not exist under ``TRITON_INTERPRET``.
* Divisions use ``tl.math.div_rn`` (IEEE division); Triton's ``/`` on float32 is an approximate
  division on CUDA. The one exception is ``range / qmax``, which follows the device's PyTorch
  (:func:`inv_qmax`): on CUDA, PyTorch multiplies by the float32 reciprocal of a Python scalar
  divisor, so the scales (and codes) of the reference differ between CPU and CUDA, and the
  kernel matches each.
* Dequantization runs with floating-point contraction off, so ``code * scale + mn`` is rounded
  twice as in PyTorch, never fused into one FMA.

Import this module only through :mod:`kvfp.kernels.dispatch` (``@triton.jit`` reads
``TRITON_INTERPRET`` when it decorates).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from kvfp.kernels.pack import check_pack
from kvfp.kernels.pack_triton import pack_tile, row_block, unpack_tile
from kvfp.kernels.quant_layout import QuantLayout
from kvfp.kernels.quant_ref import FP8_DTYPES

RINT_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23


@triton.jit
def round_half_even(y):
    return (y + RINT_MAGIC) - RINT_MAGIC


def inv_qmax(bits: int, zero_point: bool, device: torch.device) -> float:
    """How ``range / qmax`` is computed, following the device's PyTorch: on CUDA, a tensor divided
    by a Python scalar is multiplied by the float32 reciprocal of the scalar (ATen's
    ``div_true_kernel_cuda``); on CPU it is divided. Returns that reciprocal, or 0 for division."""
    if device.type != "cuda":
        return 0.0
    qmax = (1 << bits) - 1 if zero_point else (1 << (bits - 1)) - 1
    return float(np.float32(1.0) / np.float32(qmax))


@triton.jit
def _over_qmax(r, qmax, INV_QMAX: tl.constexpr):
    if INV_QMAX == 0.0:
        out = tl.math.div_rn(r, qmax * 1.0)
    else:
        out = r * INV_QMAX
    return out


@triton.jit
def _codes(x, lo, hi, BITS: tl.constexpr, ZP: tl.constexpr, INV_QMAX: tl.constexpr):
    """Codes of ``x`` given its group's minimum ``lo`` and maximum ``hi`` (broadcast against it);
    returns ``(codes int32, scale, mn)``; for symmetric codes ``lo = 0`` and ``hi`` is the absmax."""
    if ZP:
        qmax: tl.constexpr = (1 << BITS) - 1
        scale = _over_qmax(hi - lo, qmax, INV_QMAX)
        scale = tl.where(scale > 0, scale, 1.0)
        codes = tl.clamp(round_half_even(tl.math.div_rn(x - lo, scale)), 0.0, qmax * 1.0)
    else:
        qmax: tl.constexpr = (1 << (BITS - 1)) - 1
        scale = tl.where(hi > 0, _over_qmax(hi, qmax, INV_QMAX), 1.0)
        codes = tl.clamp(round_half_even(tl.math.div_rn(x, scale)), -qmax * 1.0, qmax * 1.0)
    return codes.to(tl.int32), scale, lo


@triton.jit
def _quant_groups_kernel(X, C, S, M, N, D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, ZP: tl.constexpr,
                         PACK: tl.constexpr, INV_QMAX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    """Rows of ``D`` channels, one scale per group of ``G`` consecutive channels; program
    ``(i, g)`` quantizes group ``g`` of rows ``i * BLOCK_R …``."""
    g = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_G)
    rmask = rows < N
    mask = rmask[:, None] & (cols < G)[None, :]
    x = tl.load(X + rows[:, None] * D + g * G + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if ZP:
        lo = tl.min(tl.where(mask, x, float("inf")), axis=1)
        hi = tl.max(tl.where(mask, x, float("-inf")), axis=1)
    else:
        lo = tl.zeros([BLOCK_R], tl.float32)
        hi = tl.max(tl.abs(x), axis=1)
    codes, scale, mn = _codes(x, lo[:, None], hi[:, None], BITS, ZP, INV_QMAX)
    tl.store(S + rows * (D // G) + g, tl.reshape(scale, [BLOCK_R]), mask=rmask)
    if ZP:
        tl.store(M + rows * (D // G) + g, tl.reshape(mn, [BLOCK_R]), mask=rmask)
    if PACK:
        PER: tl.constexpr = 8 // BITS
        j = tl.arange(0, BLOCK_G // PER)
        tl.store(C + rows[:, None] * (D // PER) + g * (G // PER) + j[None, :],
                 pack_tile(codes, BITS, BLOCK_R, BLOCK_G).to(tl.uint8),
                 mask=rmask[:, None] & (j < G // PER)[None, :])
    else:
        tl.store(C + rows[:, None] * D + g * G + cols[None, :], codes.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _quant_blocks_kernel(X, C, S, M, T, D: tl.constexpr, TB: tl.constexpr, BITS: tl.constexpr, ZP: tl.constexpr,
                         PACK: tl.constexpr, INV_QMAX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per channel over blocks of ``TB`` tokens of ``(BH, T, D)``; program ``(bh * T // TB + blk, c)``
    quantizes channels ``c * BLOCK_D …`` of one block."""
    blk = tl.program_id(0).to(tl.int64)  # = bh * (T // TB) + block: blocks of a head are consecutive rows
    toks = tl.arange(0, BLOCK_T)
    chans = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tmask, cmask = toks < TB, chans < D
    mask = tmask[:, None] & cmask[None, :]
    rows = blk * TB + toks
    x = tl.load(X + rows[:, None] * D + chans[None, :], mask=mask, other=0.0).to(tl.float32)
    if ZP:
        lo = tl.min(tl.where(mask, x, float("inf")), axis=0)
        hi = tl.max(tl.where(mask, x, float("-inf")), axis=0)
    else:
        lo = tl.zeros([BLOCK_D], tl.float32)
        hi = tl.max(tl.abs(x), axis=0)
    codes, scale, mn = _codes(x, lo[None, :], hi[None, :], BITS, ZP, INV_QMAX)
    tl.store(S + blk * D + chans, tl.reshape(scale, [BLOCK_D]), mask=cmask)
    if ZP:
        tl.store(M + blk * D + chans, tl.reshape(mn, [BLOCK_D]), mask=cmask)
    if PACK:
        PER: tl.constexpr = 8 // BITS
        j = tl.program_id(1) * (BLOCK_D // PER) + tl.arange(0, BLOCK_D // PER)
        tl.store(C + rows[:, None] * (D // PER) + j[None, :], pack_tile(codes, BITS, BLOCK_T, BLOCK_D).to(tl.uint8),
                 mask=tmask[:, None] & (j < D // PER)[None, :])
    else:
        tl.store(C + rows[:, None] * D + chans[None, :], codes.to(C.dtype.element_ty), mask=mask)


GATHER, ROW, GROUPS = 0, 1, 2  # how dequant_tile reads scales (see scale_access)


def scale_access(tg: int, dg: int, d: int, block_t: int) -> int:
    """How :func:`dequant_tile` reads the scales of a layout: ``ROW`` when every tile of
    ``block_t`` tokens (starting at a multiple of ``block_t``) lies inside one token group, so one
    row of per-channel scales serves the tile; ``GROUPS`` when head_dim is a power of two cut into
    groups, so each token's ``D // dg`` scales are loaded once and broadcast; ``GATHER`` (one load
    per element) otherwise. Per-token scales are always one load per token."""
    if tg > 1 and tg % block_t == 0:
        return ROW
    if tg == 1 and 1 < dg < d and d == triton.next_power_of_2(d) and dg == triton.next_power_of_2(dg):
        return GROUPS
    return GATHER


@triton.jit
def dequant_tile(C, S, M, t0, toks, tmask, stride_c, stride_s, D: tl.constexpr, BITS: tl.constexpr,
                 TG: tl.constexpr, DG: tl.constexpr, ZP: tl.constexpr, PACKED: tl.constexpr,
                 SCALES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tokens ``toks`` ``(BLOCK_T,)`` of one head (the tile starting at token ``t0``), dequantized
    in float32 ``(BLOCK_T, BLOCK_D)`` (zero beyond ``D`` and where ``tmask`` is False).

    ``C`` points at the head's codes (row stride ``stride_c``; packed along head_dim when
    ``PACKED``), ``S``/``M`` at its scales/minima ``(T // TG, D // DG)`` (row stride ``stride_s``),
    read as :func:`scale_access` says (``SCALES``).
    """
    PER: tl.constexpr = 8 // BITS if PACKED else 1
    j = tl.arange(0, BLOCK_D // PER)
    raw = tl.load(C + toks[:, None] * stride_c + j[None, :], mask=tmask[:, None] & (j < D // PER)[None, :], other=0)
    if PACKED:
        codes = unpack_tile(raw.to(tl.int32), BITS, not ZP)
    else:
        codes = raw.to(tl.int32)  # int8 loads sign-extend, uint8 loads zero-extend
    chans = tl.arange(0, BLOCK_D)
    srow = (toks // TG) * stride_s
    if DG == D:  # one scale per token
        scale = tl.load(S + srow, mask=tmask, other=0.0)[:, None]
        if ZP:
            mn = tl.load(M + srow, mask=tmask, other=0.0)[:, None]
    elif SCALES == 1:  # ROW: the tile's one row of per-channel scales
        row = (t0 // TG) * stride_s + chans
        scale = tl.load(S + row, mask=chans < D, other=0.0)[None, :]
        if ZP:
            mn = tl.load(M + row, mask=chans < D, other=0.0)[None, :]
    elif SCALES == 2:  # GROUPS: D // DG scales per token, each broadcast over its DG channels
        NG: tl.constexpr = D // DG
        grp = srow[:, None] + tl.arange(0, NG)[None, :]
        s = tl.load(S + grp, mask=tmask[:, None], other=0.0)
        scale = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_T, NG, DG)), (BLOCK_T, BLOCK_D))
        if ZP:
            m = tl.load(M + grp, mask=tmask[:, None], other=0.0)
            mn = tl.reshape(tl.broadcast_to(m[:, :, None], (BLOCK_T, NG, DG)), (BLOCK_T, BLOCK_D))
    else:
        smask = tmask[:, None] & (chans < D)[None, :]
        scale = tl.load(S + srow[:, None] + (chans // DG)[None, :], mask=smask, other=0.0)
        if ZP:
            mn = tl.load(M + srow[:, None] + (chans // DG)[None, :], mask=smask, other=0.0)
    x = codes.to(tl.float32) * scale
    if ZP:
        x = x + mn
    return x


@triton.jit
def _dequant_kernel(C, S, M, O, T, stride_c, D: tl.constexpr, BITS: tl.constexpr, TG: tl.constexpr,
                    DG: tl.constexpr, ZP: tl.constexpr, PACKED: tl.constexpr, SCALES: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program ``(bh, i)`` dequantizes tokens ``i * BLOCK_T …`` of head ``bh`` of ``(BH, T, …)``."""
    bh = tl.program_id(0).to(tl.int64)
    t0 = tl.program_id(1) * BLOCK_T
    toks = t0 + tl.arange(0, BLOCK_T)
    tmask = toks < T
    x = dequant_tile(C + bh * T * stride_c, S + bh * (T // TG) * (D // DG), M + bh * (T // TG) * (D // DG), t0,
                     toks, tmask, stride_c, D // DG, D, BITS, TG, DG, ZP, PACKED, SCALES, BLOCK_T, BLOCK_D)
    chans = tl.arange(0, BLOCK_D)
    tl.store(O + bh * T * D + toks[:, None] * D + chans[None, :], x.to(O.dtype.element_ty),
             mask=tmask[:, None] & (chans < D)[None, :])


def quantize(x: torch.Tensor, layout: QuantLayout, pack: bool = False):
    """Triton :func:`kvfp.kernels.quant_layout.quantize` of ``x`` ``(…, T, D)``; with ``pack`` the
    codes come packed along head_dim (:mod:`kvfp.kernels.pack`)."""
    tg, dg = layout.groups(x.shape)
    *lead, T, D = x.shape
    bits, zp = layout.bits, layout.zero_point
    per = check_pack(bits, D) if pack else 1
    if pack and tg == 1 and dg % per:  # a row-group kernel packs each group on its own
        raise ValueError(f"groups of {dg} channels do not fill whole bytes at {bits} bits")
    src = x.contiguous()
    code_dtype = torch.uint8 if (pack or zp) else torch.int8
    codes = torch.empty(*lead, T, D // per, dtype=code_dtype, device=x.device)
    scale = torch.empty(*lead, T // tg, D // dg, dtype=torch.float32, device=x.device)
    mn = torch.empty_like(scale) if zp else scale  # an unused pointer when there is no zero point
    if x.numel() == 0:
        return codes, scale, (mn if zp else None)
    inv = inv_qmax(bits, zp, x.device)
    if tg == 1:
        N = src.numel() // D
        block_g = max(triton.next_power_of_2(dg), per)
        block_r = row_block(block_g)
        _quant_groups_kernel[(triton.cdiv(N, block_r), D // dg)](src, codes, scale, mn, N, D, dg, bits, zp, pack,
                                                                 inv, block_r, block_g, enable_fp_fusion=False)
    else:
        BH = src.numel() // (T * D)
        block_t = triton.next_power_of_2(tg)
        block_d = max(per, min(triton.next_power_of_2(D), max(16, 4096 // block_t)))
        _quant_blocks_kernel[(BH * (T // tg), triton.cdiv(D, block_d))](src, codes, scale, mn, T, D, tg, bits, zp,
                                                                        pack, inv, block_t, block_d,
                                                                        enable_fp_fusion=False)
    return codes, scale, (mn if zp else None)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor | None, layout: QuantLayout,
               dtype: torch.dtype, packed: bool = False, head_dim: int | None = None) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.quant_layout.dequantize`; ``packed`` codes need ``head_dim``
    only to check it (it follows from the codes' width)."""
    *lead, T, W = codes.shape
    D = W * (8 // layout.bits) if packed else W
    if head_dim is not None and head_dim != D:
        raise ValueError(f"packed codes of width {W} hold {D} channels, not {head_dim}")
    if packed:
        check_pack(layout.bits, D)
    tg, dg = layout.groups((T, D))
    BH = codes.numel() // max(1, T * W)
    out = torch.empty(*lead, T, D, dtype=dtype, device=codes.device)
    if out.numel() == 0:
        return out
    s = scale.contiguous()
    m = s if mn is None else mn.contiguous()
    block_d = triton.next_power_of_2(D)
    block_t = row_block(block_d)
    _dequant_kernel[(BH, triton.cdiv(T, block_t))](codes.contiguous(), s, m, out, T, W, D, layout.bits, tg, dg,
                                                   layout.zero_point, packed, scale_access(tg, dg, D, block_t),
                                                   block_t, block_d, enable_fp_fusion=False)
    return out


# -- FP8 -----------------------------------------------------------------------------------------

TL_FP8 = {"e4m3": tl.float8e4nv, "e5m2": tl.float8e5}
FP8_GRID = {"e4m3": (3, -6), "e5m2": (2, -14)}  # mantissa bits, smallest normal exponent


@triton.jit
def _fp8_quant_kernel(X, S, C, N, D: tl.constexpr, FMAX: tl.constexpr, FP8: tl.constexpr, MBITS: tl.constexpr,
                      EMIN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < N)[:, None] & (cols < D)[None, :]
    x = tl.load(X + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(S + rows, mask=rows < N, other=1.0)
    y = tl.clamp(tl.math.div_rn(x, s[:, None]), -FMAX, FMAX)
    # round to the FP8 grid in float32 first (ulp = 2^(max(exponent, EMIN) - MBITS), scaling by powers
    # of two is exact), so that the cast is exact: the interpreter's own fp32 -> fp8 rounding drops
    # the carry into the exponent (127.7 -> 64 instead of 128)
    # the sign is put back by its bit, so that what rounds to zero stays -0 as in PyTorch
    bits = y.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 255) - 127, EMIN) - MBITS
    ulp = ((e + 127) << 23).to(tl.float32, bitcast=True)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)
    mag = round_half_even(tl.abs(y) * inv) * ulp
    y = (mag.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)
    tl.store(C + rows[:, None] * D + cols[None, :], y.to(FP8).to(tl.uint8, bitcast=True), mask=mask)


@triton.jit
def _fp8_dequant_kernel(C, S, O, N, D: tl.constexpr, FP8: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < N)[:, None] & (cols < D)[None, :]
    c = tl.load(C + rows[:, None] * D + cols[None, :], mask=mask, other=0)
    s = tl.load(S + rows, mask=rows < N, other=1.0)
    x = c.to(FP8, bitcast=True).to(tl.float32) * s[:, None]
    tl.store(O + rows[:, None] * D + cols[None, :], x.to(O.dtype.element_ty), mask=mask)


def _row_scales(scale, x: torch.Tensor) -> torch.Tensor:
    """A scalar or a tensor broadcasting against ``x`` ``(…, D)`` with the last axis 1 → one scale
    per row, ``(N,)`` float32."""
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if s.dim() and s.shape[-1] != 1:
        raise ValueError("an FP8 scale covers whole rows: its last axis must be 1")
    return s.expand(*x.shape[:-1], 1).reshape(-1).contiguous()


def _rows_grid(N: int, D: int):
    block_d = triton.next_power_of_2(D)
    block_r = row_block(block_d)
    return (triton.cdiv(N, block_r),), block_r, block_d


def quantize_fp8(x: torch.Tensor, fmt: str, scale=1.0) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.quant_ref.quantize_fp8` (a scale per row at most)."""
    D = x.shape[-1]
    src = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    N = src.numel() // max(1, D)
    if N == 0:
        return out
    grid, block_r, block_d = _rows_grid(N, D)
    fmax = torch.finfo(FP8_DTYPES[fmt]).max
    _fp8_quant_kernel[grid](src, _row_scales(scale, x), out, N, D, fmax, TL_FP8[fmt], *FP8_GRID[fmt], block_r, block_d,
                            enable_fp_fusion=False)
    return out


def dequantize_fp8(codes: torch.Tensor, fmt: str, scale, dtype: torch.dtype) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.quant_ref.dequantize_fp8`."""
    D = codes.shape[-1]
    out = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    N = codes.numel() // max(1, D)
    if N == 0:
        return out
    grid, block_r, block_d = _rows_grid(N, D)
    _fp8_dequant_kernel[grid](codes.contiguous(), _row_scales(scale, codes), out, N, D, TL_FP8[fmt], block_r,
                              block_d, enable_fp_fusion=False)
    return out
