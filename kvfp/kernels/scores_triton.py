"""Triton attention-score accumulation for eviction (references: :mod:`kvfp.kernels.scores_ref`).

Both kernels read the attention probabilities ``(B, H, q, S)`` once, tile by tile of entries, and
reduce over queries and the query heads of a KV head in registers. SnapKV's pooling is a second,
small pass over the ``(B, Hkv, S - window)`` votes.

Import this module only through :mod:`kvfp.kernels.dispatch` (``@triton.jit`` reads
``TRITON_INTERPRET`` when it decorates).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _group_sum(P, b, hk, q0, q1, cols, cmask, stride_pb, stride_ph, stride_pq,
               GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr):
    """Sum of ``P[b, h, q0:q1, cols]`` over the queries and the ``GROUP`` heads of KV head ``hk``."""
    acc = tl.zeros([BLOCK_S], tl.float32)
    for g in range(GROUP):
        base = P + b * stride_pb + (hk * GROUP + g) * stride_ph
        for r0 in range(q0, q1, BLOCK_Q):
            rows = r0 + tl.arange(0, BLOCK_Q)
            p = tl.load(base + rows[:, None] * stride_pq + cols[None, :],
                        mask=(rows < q1)[:, None] & cmask[None, :], other=0.0)
            acc += tl.sum(p.to(tl.float32), axis=0)
    return acc


@triton.jit
def _h2o_kernel(P, PREV, OUT, Q_LEN, S, S0, stride_pb, stride_ph, stride_pq, stride_rb, stride_rh,
                HKV: tl.constexpr, GROUP: tl.constexpr, HAS_PREV: tl.constexpr,
                BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    b, hk = (pid // HKV).to(tl.int64), pid % HKV
    cols = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    cmask = cols < S
    votes = _group_sum(P, b, hk, 0, Q_LEN, cols, cmask, stride_pb, stride_ph, stride_pq, GROUP, BLOCK_Q, BLOCK_S)
    if HAS_PREV:
        votes += tl.load(PREV + b * stride_rb + hk * stride_rh + cols, mask=cols < S0, other=0.0)
    tl.store(OUT + pid.to(tl.int64) * S + cols, votes, mask=cmask)


@triton.jit
def _window_votes_kernel(P, OUT, Q_LEN, WINDOW, PREFIX, stride_pb, stride_ph, stride_pq,
                         HKV: tl.constexpr, GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    b, hk = (pid // HKV).to(tl.int64), pid % HKV
    cols = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    cmask = cols < PREFIX
    votes = _group_sum(P, b, hk, Q_LEN - WINDOW, Q_LEN, cols, cmask, stride_pb, stride_ph, stride_pq,
                       GROUP, BLOCK_Q, BLOCK_S)
    tl.store(OUT + pid.to(tl.int64) * PREFIX + cols, votes / GROUP, mask=cmask)


@triton.jit
def _avg_pool_kernel(V, OUT, N, KERNEL: tl.constexpr, BLOCK_S: tl.constexpr):
    """Stride-1 average pool of odd width ``KERNEL`` over rows of ``N``, zero padded (padding counted)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_S], tl.float32)
    for tap in tl.static_range(KERNEL):
        src = cols + (tap - KERNEL // 2)
        acc += tl.load(V + row * N + src, mask=(src >= 0) & (src < N), other=0.0)
    tl.store(OUT + row * N + cols, acc / KERNEL, mask=cols < N)


def _blocks(q_len: int, s: int) -> tuple[int, int]:
    block_s = min(triton.next_power_of_2(max(s, 1)), 256)
    block_q = max(1, min(triton.next_power_of_2(max(q_len, 1)), 4096 // block_s))
    return block_q, block_s


def _rows_last_contiguous(probs: torch.Tensor) -> torch.Tensor:
    return probs if probs.stride(-1) == 1 else probs.contiguous()


def h2o_accumulate(prev: torch.Tensor | None, probs: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.scores_ref.h2o_accumulate`."""
    B, H, q_len, S = probs.shape
    p = _rows_last_contiguous(probs)
    out = torch.empty(B, n_kv, S, dtype=torch.float32, device=probs.device)
    if prev is not None:
        prev = prev.float()
        prev = prev if prev.stride(-1) == 1 else prev.contiguous()
    pr = out if prev is None else prev
    block_q, block_s = _blocks(q_len, S)
    _h2o_kernel[(B * n_kv, triton.cdiv(S, block_s))](
        p, pr, out, q_len, S, 0 if prev is None else prev.shape[-1], p.stride(0), p.stride(1), p.stride(2),
        pr.stride(0), pr.stride(1), n_kv, H // n_kv, prev is not None, block_q, block_s)
    return out


def snapkv_votes(probs: torch.Tensor, n_kv: int, window: int, kernel: int) -> torch.Tensor:
    """Triton :func:`kvfp.kernels.scores_ref.snapkv_votes`."""
    if kernel % 2 == 0:
        raise ValueError(f"the pooling width must be odd, not {kernel}")
    B, H, q_len, S = probs.shape
    if not 1 <= window <= min(q_len, S):
        raise ValueError(f"an observation window of {window} needs at least {window} queries and entries")
    prefix = S - window
    votes = torch.empty(B, n_kv, prefix, dtype=torch.float32, device=probs.device)
    if prefix == 0:
        return votes
    p = _rows_last_contiguous(probs)
    block_q, block_s = _blocks(window, prefix)
    grid = (B * n_kv, triton.cdiv(prefix, block_s))
    _window_votes_kernel[grid](p, votes, q_len, window, prefix, p.stride(0), p.stride(1), p.stride(2),
                               n_kv, H // n_kv, block_q, block_s)
    if kernel == 1:
        return votes
    pooled = torch.empty_like(votes)
    _avg_pool_kernel[grid](votes, pooled, prefix, kernel, block_s)
    return pooled
