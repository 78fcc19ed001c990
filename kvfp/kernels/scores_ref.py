"""Attention-score accumulation for eviction: the references of :mod:`kvfp.kernels.scores_triton`.

Shapes: ``B`` batch, ``H`` query heads, ``Hkv`` KV heads (query head ``h`` reads KV head
``h // (H // Hkv)``), ``q`` queries of this forward, ``S`` entries attended.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def h2o_accumulate(prev: torch.Tensor | None, probs: torch.Tensor, n_kv: int) -> torch.Tensor:
    """H2O's accumulated attention (arXiv 2306.14048) after one more forward.

    ``probs`` ``(B, H, q, S)``: this forward's attention (rows of queries that must not vote
    already zeroed). Each entry receives the sum over the queries and over the query heads of its
    KV head; ``prev`` ``(B, Hkv, S0)`` (``S0 <= S``: entries appended since get 0) is added.
    Returns ``(B, Hkv, S)`` float32.
    """
    B, H, _, S = probs.shape
    votes = probs.float().sum(-2).view(B, n_kv, H // n_kv, S).sum(2)
    if prev is None:
        return votes
    if prev.shape[-1] < S:
        prev = torch.cat([prev, prev.new_zeros(*prev.shape[:2], S - prev.shape[-1])], dim=-1)
    return prev + votes


def snapkv_votes(probs: torch.Tensor, n_kv: int, window: int, kernel: int) -> torch.Tensor:
    """SnapKV's importance of the prefix (arXiv 2404.14469, official defaults: average pooling).

    ``probs`` ``(B, H, q, S)``. The last ``window`` queries vote: their probabilities of the
    ``S - window`` entries before the window are summed over those queries, averaged over the
    query heads of each KV head, and smoothed by a stride-1 average pool of odd width ``kernel``
    (zero padded, the padding counted). Returns ``(B, Hkv, S - window)`` float32.
    """
    B, H, q, S = probs.shape
    g = probs[:, :, -window:, : S - window].float().sum(-2)
    votes = g.view(B, n_kv, H // n_kv, S - window).mean(2)
    if kernel > 1 and S > window:
        flat = votes.reshape(B * n_kv, 1, S - window)
        votes = F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2).view(B, n_kv, S - window)
    return votes
