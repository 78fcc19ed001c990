"""Layers whose entries live in a store: the base of every scheme that keeps tokens.

``StoredLayer`` appends each step's K/V to its store, records their slots, and returns what
attention sees. Subclasses evict by calling ``keep`` — at write time (``after_store``: windows,
key norms) or once attention has been computed (``observe``: H2O, SnapKV, TOVA…).

Precision follows serving engines: a multi-token forward (prefill chunk) attends over its own
K/V exactly as projected — the kernel reads them before they are written to the cache — while
everything read back from the cache, the current token during decode included, comes through the
store's encoding. A store whose ``prefill_reads_cache`` is True (llama.cpp's cache types: the
engine writes every K/V into its cache as computed and attention always reads the cache) makes
the prefill chunk read its own entries through the encoding too. With an exact store all are the
same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvfp.compressors.layer import KvfpLayer, StepState
from kvfp.compressors.stores import ExactStore, _gather_tokens


class StoredLayer(KvfpLayer):
    def __init__(self, step: StepState, make_store: Callable[[], object] = ExactStore):
        super().__init__(step)
        self.make_store = make_store
        self.clear()

    def clear(self) -> None:
        self.kv = self.make_store()
        self.slots = self.valid = None  # (B, Hm, S); Hm is 1 until entries are kept per head

    def __len__(self) -> int:
        return len(self.kv)

    def store(self, k, v, slots, valid):
        prev = (self.kv.keys(), self.kv.values()) if len(self.kv) else None
        self.kv.append(k, v)
        hm = 1 if self.slots is None else self.slots.shape[1]
        slots, valid = slots[:, :hm], valid[:, :hm]
        self.slots = slots if self.slots is None else torch.cat([self.slots, slots], dim=-1)
        self.valid = valid if self.valid is None else torch.cat([self.valid, valid], dim=-1)
        if k.shape[-2] > 1 and not getattr(self.kv, "prefill_reads_cache", False):
            keys = k if prev is None else torch.cat([prev[0], k], dim=-2)
            values = v if prev is None else torch.cat([prev[1], v], dim=-2)
        else:
            keys, values = self.kv.keys(), self.kv.values()
        seen = keys, values, self.slots, self.valid
        self.after_store(k, v)
        return seen

    def after_store(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Evictions decided when entries are written; default none."""

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only entries ``idx`` — ``(B, H, S')`` or ``(B, 1, S')``, ascending — of every head."""
        self.kv.select(idx)
        self.slots, self.valid = _gather_tokens(self.slots, idx), _gather_tokens(self.valid, idx)

    def keep_last(self, n: int) -> None:
        S = len(self.kv)
        if S > n:
            idx = torch.arange(S - n, S, device=self.slots.device)
            self.keep(idx.view(1, 1, n).expand(self.slots.shape[0], 1, n))

    def nbytes(self) -> int:
        return self.kv.nbytes()
