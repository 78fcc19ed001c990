"""Layers that keep K/V at the model's own precision: ``none`` and the sliding window."""

from __future__ import annotations

import torch

from kvfp.compressors.layer import KvfpLayer, StepState, tensor_bytes


class ExactLayer(KvfpLayer):
    """Keeps every entry unchanged; the reference every scheme departs from."""

    def __init__(self, step: StepState):
        super().__init__(step)
        self.clear()

    def clear(self) -> None:
        self.keys = self.values = self.slots = self.valid = None

    def _append(self, k, v, slots, valid):
        # every head keeps the same slots here, so one row of slot bookkeeping serves all heads
        slots, valid = slots[:, :1], valid[:, :1]  # (B, 1, q)
        if self.keys is None:
            self.keys, self.values, self.slots, self.valid = k, v, slots, valid
        else:
            self.keys = torch.cat([self.keys, k], dim=-2)
            self.values = torch.cat([self.values, v], dim=-2)
            self.slots = torch.cat([self.slots, slots], dim=-1)
            self.valid = torch.cat([self.valid, valid], dim=-1)

    def store(self, k, v, slots, valid):
        self._append(k, v, slots, valid)
        return self.keys, self.values, self.slots, self.valid

    def nbytes(self) -> int:
        # slot bookkeeping is kvfp's, not the scheme's: a plain cache needs no indices
        return tensor_bytes(self.keys, self.values)


class WindowLayer(ExactLayer):
    """Sliding window: each query attends to itself and the ``window - 1`` slots before it.

    The cache holds the last ``window`` entries between steps. During a multi-token forward
    (prefill) the band mask applies inside the chunk too, so a query never sees further back than
    it would when decoding token by token (Mistral-style sliding-window attention).
    """

    def __init__(self, step: StepState, window: int):
        super().__init__(step)
        self.window = window

    def store(self, k, v, slots, valid):
        self._append(k, v, slots, valid)
        seen = self.keys, self.values, self.slots, self.valid
        w = self.window
        self.keys, self.values = self.keys[:, :, -w:], self.values[:, :, -w:]
        self.slots, self.valid = self.slots[:, :, -w:], self.valid[:, :, -w:]
        return seen

    def band(self, q_slots, k_slots):
        return k_slots > q_slots - self.window

    def nbytes(self) -> int:
        return tensor_bytes(self.keys, self.values)
