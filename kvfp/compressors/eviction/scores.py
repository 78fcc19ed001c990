"""Importance scores and top-k selection for eviction schemes: small pure functions.

These are the reference implementations (the specification), except where one says it goes
through :mod:`kvfp.kernels.dispatch` (a Triton kernel on CUDA, its reference elsewhere). Shapes:
``B`` batch, ``H`` query heads, ``Hkv`` KV heads, ``q`` queries of this forward, ``S`` kept
entries, ``D`` head_dim.
"""

from __future__ import annotations

import math

import torch

from kvfp.kernels.dispatch import snapkv_votes


def budget_tokens(fraction: float, n: torch.Tensor, minimum: int = 1) -> torch.Tensor:
    """``floor(fraction * n)`` per row, at least ``minimum``: ``n`` ``(B,)`` → ``(B,)`` long.

    The ``1e-9`` guards against binary fractions landing just under an integer (0.29 * 100).
    """
    return torch.clamp(torch.floor(n.double() * fraction + 1e-9).long(), min=minimum)


def per_kv_head(x: torch.Tensor, n_kv: int, reduce: str = "sum") -> torch.Tensor:
    """Aggregate query heads onto their KV head: ``(B, H, …)`` → ``(B, Hkv, …)``.

    Query head ``h`` reads KV head ``h // (H // Hkv)`` (transformers' ``repeat_kv`` layout).
    ``reduce`` is ``"sum"`` or ``"mean"`` over the ``H // Hkv`` heads of a group.
    """
    B, H = x.shape[:2]
    g = x.view(B, n_kv, H // n_kv, *x.shape[2:])
    return g.sum(2) if reduce == "sum" else g.mean(2)


def topk_mask(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Boolean mask of the ``k`` highest ``scores`` along the last axis.

    ``scores`` ``(B, Hs, S)``; ``k`` an int or ``(B,)`` per-row counts. Entries scored ``-inf``
    are never kept, so a row keeps fewer than ``k`` when it has fewer finite scores. Ties go to
    the earlier entry (stable sort), so the result is deterministic.
    """
    B, _, S = scores.shape
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(S, device=scores.device).expand_as(order))
    k = torch.as_tensor(k, device=scores.device).reshape(-1, 1, 1)
    return (rank < k) & (scores > -math.inf)


def window_votes(probs: torch.Tensor, n_kv: int, window: int, kernel: int) -> torch.Tensor:
    """SnapKV's importance of the prefix (arXiv 2404.14469, official defaults: avg pooling).

    ``probs`` ``(B, H, q, S)`` attention of this forward. The last ``window`` queries vote: their
    probabilities are summed over those queries, averaged over the query heads of each KV head,
    and smoothed by a stride-1 average pool of width ``kernel`` (zero padded, so the output keeps
    the prefix length). Returns ``(B, Hkv, S - window)`` scores of the entries before the window.
    """
    return snapkv_votes(probs, n_kv, window, kernel)  # reference: kvfp.kernels.scores_ref


def block_min_max(keys: torch.Tensor, block_id: torch.Tensor, n_blocks: int):
    """Per-block, per-channel minimum and maximum of the keys (Quest's page metadata).

    ``keys`` ``(B, Hkv, S, D)``; ``block_id`` ``(B, 1 | Hkv, S)`` in ``[0, n_blocks)``, or
    ``n_blocks`` for entries that belong to no block (left padding). Returns two
    ``(B, Hkv, n_blocks, D)`` tensors (zeros for empty blocks: callers mask those out).
    """
    B, Hkv, S, D = keys.shape
    index = block_id.expand(B, Hkv, S)[..., None].expand(B, Hkv, S, D)
    k = keys.float()
    lo = torch.full((B, Hkv, n_blocks + 1, D), math.inf, device=keys.device)
    hi = torch.full((B, Hkv, n_blocks + 1, D), -math.inf, device=keys.device)
    lo = lo.scatter_reduce(2, index, k, reduce="amin", include_self=True)
    hi = hi.scatter_reduce(2, index, k, reduce="amax", include_self=True)
    empty = torch.isinf(lo)
    return lo.masked_fill(empty, 0)[:, :, :n_blocks], hi.masked_fill(empty, 0)[:, :, :n_blocks]


def quest_block_scores(query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Quest's upper bound on each block's attention logit (arXiv 2406.10774).

    ``query`` ``(B, H, D)``; ``kmin``/``kmax`` ``(B, Hkv, n, D)``. Returns ``(B, H, n)``:
    ``sum_d max(q_d * max_d, q_d * min_d)``, which bounds ``q · k`` for every key of the block.
    """
    B, H, D = query.shape
    g = H // kmin.shape[1]
    lo, hi = kmin.repeat_interleave(g, dim=1), kmax.repeat_interleave(g, dim=1)  # (B, H, n, D)
    qf = query.float()[:, :, None, :]
    return torch.maximum(qf * hi, qf * lo).sum(-1)
