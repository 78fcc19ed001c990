"""The base cache layer every scheme builds on.

A transformers ``CacheLayerMixin`` whose ``update`` returns what attention should see. Beside the
K/V it keeps, for every stored entry, its *slot* (index along the padded input sequence) and
whether that slot is a real token or left padding, so that attention can be masked correctly after
a scheme has dropped, kept or reordered entries — something HF's ``(kv_length, kv_offset)`` mask
sizes cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import CacheLayerMixin


@dataclass
class StepState:
    """What the runner tells every layer before a forward pass.

    ``valid`` is the 2D attention mask over all slots seen so far, this step's included:
    ``(B, total_slots)`` bool, False for left padding. ``positions`` are the RoPE positions of
    those slots ``(B, total_slots)``. ``rotary`` is the model's rotary-embedding module
    (``rotary(x, position_ids) -> (cos, sin)``) for schemes that work on pre-RoPE keys; None
    where the model has none.
    """

    valid: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    rotary: object | None = None


class KvfpLayer(CacheLayerMixin):
    """One layer's compressed cache.

    Subclasses implement ``store`` (take the new K/V, keep what the scheme keeps, return what this
    step's attention sees) and ``nbytes`` (bytes actually kept). They may override ``band`` to
    restrict attention beyond causality and padding, and set ``wants_scores`` to receive the
    attention probabilities of each step in ``observe``.
    """

    is_sliding = False
    is_compileable = False
    wants_scores = False

    def __init__(self, step: StepState):
        super().__init__()
        self.step = step
        self.seen = 0  # slots processed so far, padding included
        self.visible_slots: torch.Tensor | None = None  # (B, Hm, S) slots attention sees now
        self.visible_valid: torch.Tensor | None = None  # (B, Hm, S)

    # -- transformers' layer contract -------------------------------------------------------
    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.step.valid is None:
            raise RuntimeError("kvfp cache layer used without a step state; run through kvfp.runner")
        B, H, q, _ = key_states.shape  # (B, Hkv, q, D)
        slots = torch.arange(self.seen, self.seen + q, device=self.device)
        new_slots = slots.view(1, 1, q).expand(B, H, q)
        new_valid = self.step.valid[:, self.seen : self.seen + q].to(self.device)
        new_valid = new_valid.view(B, 1, q).expand(B, H, q)
        self.seen += q
        keys, values, self.visible_slots, self.visible_valid = self.store(
            key_states, value_states, new_slots, new_valid
        )
        return keys, values

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = 0 if self.visible_slots is None else self.visible_slots.shape[-1]
        return kept + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.seen = 0
        self.visible_slots = self.visible_valid = None
        self.is_initialized = False
        self.clear()

    # -- what schemes implement -------------------------------------------------------------
    def store(self, k, v, slots, valid):
        """Keep what the scheme keeps; return ``(keys, values, slots, valid)`` for attention.

        ``k, v``: ``(B, Hkv, q, D)`` new entries (RoPE applied); ``slots, valid``: ``(B, Hkv, q)``.
        Returned keys/values are ``(B, Hkv, S, D)``; slots/valid ``(B, Hkv, S)`` (or ``(B, 1, S)``
        when all heads agree).
        """
        raise NotImplementedError

    def clear(self) -> None:
        """Drop stored state."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes this layer keeps for the K/V cache, scales, zero points and indices included."""
        raise NotImplementedError

    def band(self, q_slots: torch.Tensor, k_slots: torch.Tensor) -> torch.Tensor | None:
        """Extra restriction on ``(…, q, S)`` pairs beyond causality; ``None`` for none."""
        return None

    def observe(self, probs: torch.Tensor) -> None:
        """Receive this step's attention probabilities ``(B, H, q, S)`` (when ``wants_scores``)."""

    def query_mask(self, query: torch.Tensor) -> torch.Tensor | None:
        """Query-dependent restriction ``(B, H, q, S)`` bool (Quest-style block selection);
        ``query`` is ``(B, H, q, D)`` after RoPE. None: no restriction."""
        return None

    def logit_bias(self) -> torch.Tensor | None:
        """Additive bias on attention logits ``(B, Hm, S)`` (e.g. log of merged-token counts)."""
        return None

    # -- used by kvfp's attention function --------------------------------------------------
    def allowed(self, q_len: int) -> torch.Tensor:
        """Boolean mask ``(B, Hm, q, S)``: which visible entries each current query may attend."""
        q_slots = torch.arange(self.seen - q_len, self.seen, device=self.device)
        k_slots = self.visible_slots[:, :, None, :]  # (B, Hm, 1, S)
        mask = self.visible_valid[:, :, None, :] & (k_slots <= q_slots.view(1, 1, q_len, 1))
        extra = self.band(q_slots.view(1, 1, q_len, 1), k_slots)
        return mask if extra is None else mask & extra


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
