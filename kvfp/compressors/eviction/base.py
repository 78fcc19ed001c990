"""The shared base of eviction layers: keep a boolean selection of entries, per head if need be.

Every scheme in this subpackage decides *which* entries survive as a boolean mask ``(B, Hs, S)``
(``Hs`` is 1 when all KV heads agree, else the number of KV heads) and hands it to
:meth:`EvictionLayer.keep_mask`; top-k selections go through :meth:`EvictionLayer.keep_top`.
Nothing else in a scheme gathers tensors.

Heads (or batch rows) may keep different numbers of entries (DuoAttention, FastGen, left-padded
batches). The store stays rectangular: a head that keeps fewer entries is padded with some of its
evicted entries, marked not *held*. Those are excluded from attention (``valid`` is False) and
from :meth:`nbytes`, as a paged serving kernel would not keep them.
"""

from __future__ import annotations

import torch

from kvfp.compressors.eviction.scores import topk_mask
from kvfp.compressors.stored import StoredLayer
from kvfp.compressors.stores import _gather_tokens


class EvictionLayer(StoredLayer):
    """A :class:`StoredLayer` with per-entry bookkeeping for eviction.

    State kept beside the store (each ``(B, Hs, S)``, aligned with the store's entries; entries
    appended since a tensor was last written count as ``held`` / score 0):

    - ``held``: False for padding entries of a ragged per-head cache (None: all held);
    - ``score``: an accumulated importance per entry (H2O, VATP, FastGen), float32, or None;
    - ``prompt_len``: ``(B,)`` real tokens of the first forward, which fixes fractional budgets.
    """

    def __init__(self, step, make_store=None):
        super().__init__(step, *([make_store] if make_store else []))

    def clear(self) -> None:
        super().clear()
        self.held = None
        self.score = None
        self.prompt_len = None

    # -- bookkeeping ------------------------------------------------------------------------
    def store(self, k, v, slots, valid):
        if self.prompt_len is None:
            self.prompt_len = valid[:, 0].sum(-1)  # (B,) real tokens of the prompt
        return super().store(k, v, slots, valid)

    def aligned(self, t: torch.Tensor | None, fill) -> torch.Tensor | None:
        """``t`` ``(B, Hs, S0)`` extended with ``fill`` to the store's current length."""
        S = len(self)
        if t is None or t.shape[-1] == S:
            return t
        pad = t.new_full((*t.shape[:2], S - t.shape[-1]), fill)
        return torch.cat([t, pad], dim=-1)

    def live(self) -> torch.Tensor:
        """``(B, Hm, S)`` entries that are real tokens and still held (attention may see them)."""
        held = self.aligned(self.held, True)
        return self.valid if held is None else self.valid & held

    def real_queries(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` ``(B, H, q, S)`` with the rows of left-padding queries zeroed (a padding query
        sees no key, so the softmax spreads it uniformly; it must not vote)."""
        q = probs.shape[2]
        real = self.step.valid[:, self.seen - q : self.seen].to(probs.device)  # (B, q)
        return probs * real[:, None, :, None]

    def real_index(self, slots: torch.Tensor) -> torch.Tensor:
        """Index of each slot among its row's real tokens (0 for the first one; -1 for left
        padding): ``slots`` ``(B, …)`` → same shape."""
        rank = self.step.valid.long().cumsum(-1) - 1  # (B, total_slots)
        B = slots.shape[0]
        return rank.to(slots.device).gather(1, slots.reshape(B, -1)).view(slots.shape)

    # -- eviction ---------------------------------------------------------------------------
    def keep(self, idx: torch.Tensor) -> None:
        self.held = _gather_tokens(self.aligned(self.held, True), idx) if self.held is not None else None
        self.score = _gather_tokens(self.aligned(self.score, 0.0), idx) if self.score is not None else None
        super().keep(idx)

    def keep_mask(self, mask: torch.Tensor) -> None:
        """Keep the entries where ``mask`` ``(B, Hs, S)`` is True (only held ones count).

        When every head and row keeps the same number, the store shrinks to exactly those
        entries; otherwise to the largest count, shorter heads padded with entries that are
        marked not held.
        """
        held = self.aligned(self.held, True)
        if held is not None:
            mask = mask & held
        if held is None and bool(mask.all()):
            return  # nothing to evict
        S = mask.shape[-1]
        n = int(mask.sum(-1).max())
        position = torch.arange(S, device=mask.device)
        order = torch.where(mask, position, position + S)  # kept entries first, then the others
        idx = torch.sort(order, dim=-1).values[..., :n] % S
        idx = torch.sort(idx, dim=-1).values  # (B, Hs, n) ascending
        kept = torch.gather(mask, -1, idx)
        self.keep(idx)
        self.valid = self.valid & kept
        self.held = None if bool(kept.all()) else kept

    def keep_top(self, scores: torch.Tensor, k: torch.Tensor | int) -> None:
        """Keep the ``k`` best-scored live entries of each head: ``scores`` ``(B, Hs, S)``
        (``+inf`` forces an entry in, ``-inf`` out), ``k`` an int or ``(B,)``."""
        scores = scores.float().masked_fill(~self.live(), -torch.inf)
        self.keep_mask(topk_mask(scores, k))

    def entry_bytes(self) -> float:
        """Bytes of held entries: codes, scales… as the store counts them."""
        total = float(self.kv.nbytes())
        held = self.aligned(self.held, True)
        if held is not None:
            total *= held.float().mean().item()  # every entry of a token-local store costs the same
        return total

    def score_bytes(self, heads: torch.Tensor | None = None) -> float:
        """Bytes of accumulated scores: one per held entry per head of ``score`` (only the heads
        flagged in ``heads`` ``(B, Hs)`` when given)."""
        if self.score is None:
            return 0.0
        score = self.aligned(self.score, 0.0)
        held = self.aligned(self.held, True)
        counted = torch.ones_like(score, dtype=torch.bool) if held is None else held.expand_as(score)
        if heads is not None:
            counted = counted & heads[:, :, None]
        return float(counted.sum()) * score.element_size()

    def nbytes(self) -> int:
        """Held entries plus accumulated scores."""
        return int(round(self.entry_bytes() + self.score_bytes()))


# -- name grammar helpers shared by the families ----------------------------------------------
NUM = r"\d*\.?\d+"  # a budget or fraction in a scheme name: 0.5, .25, 1


def fmt(x: float) -> str:
    """A fraction as it appears in a canonical name: 0.5 → "0.5", 1.0 → "1" (shortest text that
    parses back to the same float)."""
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


def check_fraction(what: str, x: float, allow_zero: bool = False) -> None:
    low_ok = x >= 0 if allow_zero else x > 0
    if not (low_ok and x <= 1):
        raise ValueError(f"{what} must be in {'[0' if allow_zero else '(0'}, 1], got {fmt(x)}")
