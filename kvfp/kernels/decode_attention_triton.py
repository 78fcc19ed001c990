"""Fused decode attention over a quantized cache (reference:
:mod:`kvfp.kernels.decode_attention_ref`).

Split-K ("flash decoding"): program ``(b * Hkv + kv_head, split)`` reads one slice of the
quantized sequence of one KV head, dequantizes each tile of codes in registers (never writing
fp16 K/V), and attends with all ``H // Hkv`` query heads of the group at once (the group is the M
axis of ``tl.dot``, padded to 16). One extra split per KV head reads the full-precision residual
window. Each split keeps a float32 online softmax (running maximum, normaliser, unnormalised
output); a second kernel merges the splits. With batch 1 and long contexts the sequence is cut
into enough splits to give every SM several programs.

Import this module only through :mod:`kvfp.kernels.dispatch` (``@triton.jit`` reads
``TRITON_INTERPRET`` when it decorates).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from kvfp.kernels.decode_attention_ref import check_decode_inputs
from kvfp.kernels.quant_layout import QuantTensor
from kvfp.kernels.quant_triton import dequant_tile, scale_access

LOG2E = math.log2(math.e)
# the running maximum of a split that has seen nothing: finite, so that exp2(EMPTY - EMPTY) = 1, not NaN
EMPTY = tl.constexpr(-1e30)


@triton.jit
def _attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """Online-softmax update with one tile: ``q`` ``(BH, BD)``, ``k``/``v`` ``(BN, BD)`` float32,
    ``ok`` ``(BN,)``; scores in log2 units (``qk_scale`` includes ``log2 e``)."""
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PREC) * qk_scale  # (BH, BN)
    s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PREC)
    return m_new, l_i, acc


@triton.jit
def _decode_split_kernel(
    Q, KC, KS, KM, VC, VS, VM, KR, VR, VALID, OP, MP, LP,
    stride_qb, stride_qh,
    stride_kcb, stride_kch, stride_kct, stride_ksb, stride_ksh, stride_kst,
    stride_vcb, stride_vch, stride_vct, stride_vsb, stride_vsh, stride_vst,
    stride_krb, stride_krh, stride_krt, stride_vrb, stride_vrh, stride_vrt,
    stride_ab, stride_ah,
    S_Q, R, CHUNK, N_QSPLITS, qk_scale,
    HKV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
    K_BITS: tl.constexpr, K_TG: tl.constexpr, K_DG: tl.constexpr, K_ZP: tl.constexpr, K_SCALES: tl.constexpr,
    V_BITS: tl.constexpr, V_TG: tl.constexpr, V_DG: tl.constexpr, V_ZP: tl.constexpr, V_SCALES: tl.constexpr,
    HAS_VALID: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b = (pid // HKV).to(tl.int64)
    hk = pid % HKV
    offs_h = tl.arange(0, BLOCK_H)
    heads = hk * GROUP + offs_h
    hmask = offs_h < GROUP
    chans = tl.arange(0, BLOCK_D)
    dmask = chans < D
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + chans[None, :],
                mask=hmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full([BLOCK_H], EMPTY, tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    valid_row = VALID + b * stride_ab + hk * stride_ah
    if split < N_QSPLITS:
        kc = KC + b * stride_kcb + hk * stride_kch
        ks = KS + b * stride_ksb + hk * stride_ksh
        km = KM + b * stride_ksb + hk * stride_ksh
        vc = VC + b * stride_vcb + hk * stride_vch
        vs = VS + b * stride_vsb + hk * stride_vsh
        vm = VM + b * stride_vsb + hk * stride_vsh
        lo = split * CHUNK
        hi = tl.minimum(lo + CHUNK, S_Q)
        for start in range(lo, hi, BLOCK_N):
            toks = start + tl.arange(0, BLOCK_N)
            ok = toks < hi
            k = dequant_tile(kc, ks, km, start, toks, ok, stride_kct, stride_kst, D, K_BITS, K_TG, K_DG, K_ZP, True,
                             K_SCALES, BLOCK_N, BLOCK_D)
            v = dequant_tile(vc, vs, vm, start, toks, ok, stride_vct, stride_vst, D, V_BITS, V_TG, V_DG, V_ZP, True,
                             V_SCALES, BLOCK_N, BLOCK_D)
            if HAS_VALID:
                ok = ok & (tl.load(valid_row + toks, mask=ok, other=0) != 0)
            m_i, l_i, acc = _attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, DOT_PREC)
    else:
        kr = KR + b * stride_krb + hk * stride_krh
        vr = VR + b * stride_vrb + hk * stride_vrh
        for start in range(0, R, BLOCK_N):
            toks = start + tl.arange(0, BLOCK_N)
            ok = toks < R
            tile_mask = ok[:, None] & dmask[None, :]
            k = tl.load(kr + toks[:, None] * stride_krt + chans[None, :], mask=tile_mask, other=0.0).to(tl.float32)
            v = tl.load(vr + toks[:, None] * stride_vrt + chans[None, :], mask=tile_mask, other=0.0).to(tl.float32)
            if HAS_VALID:
                ok = ok & (tl.load(valid_row + S_Q + toks, mask=ok, other=0) != 0)
            m_i, l_i, acc = _attend_tile(q, k, v, ok, m_i, l_i, acc, qk_scale, DOT_PREC)
    rows = (b * (HKV * GROUP) + heads) * n_splits + split  # (BLOCK_H,) rows of the partial results
    tl.store(MP + rows, m_i, mask=hmask)
    tl.store(LP + rows, l_i, mask=hmask)
    tl.store(OP + rows[:, None] * D + chans[None, :], acc, mask=hmask[:, None] & dmask[None, :])


@triton.jit
def _combine_kernel(OP, MP, LP, O, NS, stride_ob, stride_oh, H: tl.constexpr, D: tl.constexpr,
                    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the splits of one (batch row, query head): ``out = Σ 2^(m_s - M) o_s / Σ 2^(m_s - M) l_s``."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_S)
    chans = tl.arange(0, BLOCK_D)
    dmask = chans < D
    m_max = tl.full([BLOCK_S], EMPTY, tl.float32)
    for s0 in range(0, NS, BLOCK_S):
        m_max = tl.maximum(m_max, tl.load(MP + row * NS + s0 + offs, mask=s0 + offs < NS, other=EMPTY))
    big_m = tl.max(m_max, axis=0)
    l_sum = tl.zeros([BLOCK_S], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, NS, BLOCK_S):
        smask = s0 + offs < NS
        m = tl.load(MP + row * NS + s0 + offs, mask=smask, other=float("-inf"))
        w = tl.exp2(m - big_m)
        l_sum += w * tl.load(LP + row * NS + s0 + offs, mask=smask, other=0.0)
        o = tl.load(OP + (row * NS + s0 + offs)[:, None] * D + chans[None, :], mask=smask[:, None] & dmask[None, :],
                    other=0.0)
        acc += tl.sum(w[:, None] * o, axis=0)
    out = acc / tl.sum(l_sum, axis=0)
    b, h = row // H, row % H
    tl.store(O + b * stride_ob + h * stride_oh + chans, out.to(O.dtype.element_ty), mask=dmask)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _splits(q: torch.Tensor, s_q: int, programs_per_split: int, block_n: int, num_splits: int | None,
            per_sm: int):
    """``(chunk, n)``: each of ``n`` splits covers ``chunk`` (a multiple of ``block_n``) entries."""
    if s_q == 0:
        return block_n, 0
    tiles = triton.cdiv(s_q, block_n)
    if num_splits is None:
        if q.is_cuda:  # enough programs for about per_sm per SM
            num_splits = triton.cdiv(per_sm * _sm_count(q.device.index or 0), programs_per_split)
        else:
            num_splits = 2
    n = max(1, min(num_splits, tiles))
    chunk = triton.cdiv(tiles, n) * block_n
    return chunk, triton.cdiv(s_q, chunk)


def decode_attention(q: torch.Tensor, k: QuantTensor, v: QuantTensor, k_res: torch.Tensor | None = None,
                     v_res: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                     scaling: float | None = None, num_splits: int | None = None, block_n: int | None = None,
                     num_warps: int = 4, num_stages: int = 2, per_sm: int = 4) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.decode_attention_ref.decode_attention_ref` (same arguments);
    ``num_splits`` overrides the number of quantized-sequence splits per KV head (by default about
    ``per_sm`` programs per SM); ``block_n`` entries make a tile.

    Defaults are the fastest settings of ``benchmarks/bench_kernels.py --sweep`` on an H100
    (B=1, 32k entries): 4 warps, 2 stages, tiles of 64 entries when K and V have per-token scales
    and of 32 otherwise (a 32-token KIVI key block then has one row of scales per tile).
    """
    s_q, R = check_decode_inputs(q, k, v, k_res, v_res, valid)
    if block_n is None:
        per_token = all(t.layout.token_group == 1 and t.layout.channel_group in (0, k.head_dim) for t in (k, v))
        block_n = 64 if per_token else 32
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    if scaling is None:
        scaling = D**-0.5
    # codes and scales must be contiguous along head_dim; K's and V's scale and minimum share strides
    kc, vc = k.codes.contiguous(), v.codes.contiguous()
    ks, vs = k.scale.contiguous(), v.scale.contiguous()
    km = ks if k.mn is None else k.mn.contiguous()
    vm = vs if v.mn is None else v.mn.contiguous()
    qv = q[:, :, 0]  # (B, H, D)
    if qv.stride(-1) != 1:
        qv = qv.contiguous()
    if s_q == 0:  # an empty CUDA tensor has no address to hand to a kernel: pass any valid one, never read
        kc = ks = km = vc = vs = vm = qv.new_zeros(1, 1, 1, 1)
    if R == 0:
        kr = vr = qv.new_zeros(1, 1, 1, 1)  # never read
    else:
        kr, vr = k_res.to(q.dtype), v_res.to(q.dtype)
        kr = kr if kr.stride(-1) == 1 else kr.contiguous()
        vr = vr if vr.stride(-1) == 1 else vr.contiguous()
    if valid is None:
        va, stride_ab, stride_ah = qv, 0, 0
    else:
        va = valid.to(torch.int8).contiguous()
        stride_ab, stride_ah = va.stride(0), (0 if va.shape[1] == 1 else va.stride(1))

    chunk, n_q = _splits(q, s_q, B * Hkv, block_n, num_splits, per_sm)
    ns = n_q + 1  # the last split reads the residual window
    part_o = torch.empty(B, H, ns, D, dtype=torch.float32, device=q.device)
    part_m = torch.empty(B, H, ns, dtype=torch.float32, device=q.device)
    part_l = torch.empty(B, H, ns, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(D)
    kl, vl = k.layout, v.layout
    _decode_split_kernel[(B * Hkv, ns)](
        qv, kc, ks, km, vc, vs, vm, kr, vr, va, part_o, part_m, part_l,
        qv.stride(0), qv.stride(1),
        kc.stride(0), kc.stride(1), kc.stride(2), *_strides3(ks),
        vc.stride(0), vc.stride(1), vc.stride(2), *_strides3(vs),
        kr.stride(0), kr.stride(1), kr.stride(2), vr.stride(0), vr.stride(1), vr.stride(2),
        stride_ab, stride_ah,
        s_q, R, chunk, n_q, scaling * LOG2E,
        Hkv, group, D,
        kl.bits, kl.token_group, kl.channel_group or D, kl.zero_point,
        scale_access(kl.token_group, kl.channel_group or D, D, block_n),
        vl.bits, vl.token_group, vl.channel_group or D, vl.zero_point,
        scale_access(vl.token_group, vl.channel_group or D, D, block_n),
        valid is not None, "ieee" if q.dtype == torch.float32 else "tf32",
        max(16, triton.next_power_of_2(group)), block_n, block_d,
        num_warps=num_warps, num_stages=num_stages,
    )
    out = torch.empty(B, H, 1, D, dtype=q.dtype, device=q.device)
    _combine_kernel[(B * H,)](part_o, part_m, part_l, out, ns, out.stride(0), out.stride(1), H, D,
                              min(16, triton.next_power_of_2(ns)), block_d)
    return out


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)
