"""``streaming-sS-wW``: attention sinks plus a sliding window (StreamingLLM, arXiv 2309.17453)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.eviction.base import EvictionLayer
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


class SinkWindowLayer(EvictionLayer):
    """Each query attends to the first ``sinks`` real tokens and to itself and the ``window - 1``
    slots before it; the cache holds exactly those ``sinks + window`` entries between steps.

    ``streaming`` ``(Hkv,)`` bool restricts this to some KV heads (DuoAttention's streaming
    heads); the other heads keep and see everything. None: every head streams.

    The band applies inside a multi-token forward too (as ``window-N`` does), so a prompt query
    never sees what it would not see when decoding token by token. Sinks are counted among real
    tokens, so left padding does not shift them.
    """

    def __init__(self, step, sinks: int, window: int, streaming: torch.Tensor | None = None,
                 make_store=None):
        super().__init__(step, make_store)
        self.sinks, self.window, self.streaming = sinks, window, streaming

    def _local(self, q_slots, k_slots):
        r = self.real_index(k_slots)
        return ((r >= 0) & (r < self.sinks)) | (k_slots > q_slots - self.window)

    def band(self, q_slots, k_slots):  # q_slots (1, 1, q, 1); k_slots (B, Hm, 1, S)
        if self.streaming is None:
            return self._local(q_slots, k_slots)
        if not bool(self.streaming.any()):
            return None
        full = ~self.streaming.to(k_slots.device).view(1, -1, 1, 1)
        return full | self._local(q_slots, k_slots)  # (B, Hkv, q, S)

    def after_store(self, k, v):
        if self.streaming is not None and not bool(self.streaming.any()):
            return
        # what the last query saw (sinks + window); as with window-N the next step masks the oldest
        keep = self._local(torch.tensor(self.seen - 1, device=self.slots.device), self.slots)  # (B, Hm, S)
        if self.streaming is not None:
            keep = keep | ~self.streaming.to(keep.device).view(1, -1, 1)
        self.keep_mask(keep)


@dataclass(frozen=True)
class StreamingLLM(Scheme):
    """Attention sinks plus a recent window (StreamingLLM, arXiv 2309.17453).

    Budget: absolute, ``sinks + window`` entries per layer (the first ``sinks`` real tokens and
    the last ``window``), shared by all heads. Eviction happens at every forward (prefill end and
    every decode step); during prefill each query already sees only its sinks and window. Gene
    phase ``both``.

    Deviation: StreamingLLM re-assigns positions inside the cache (keys re-rotated so that
    distances are cache distances). kvfp keeps each key's original RoPE position, as most
    eviction frameworks (e.g. kvpress) do: re-rotation inside a prefill chunk would need a
    different key rotation per query, and on kvfp-tiny's 2048-token context every original
    distance is within the trained range.
    """

    sinks: int = 4
    window: int = 508

    family = "streaming"
    grammar = "streaming-sS-wW  (S ≥ 0 first tokens kept, W ≥ 1 recent tokens, itself included)"
    pattern = r"streaming-s(?P<sinks>\d+)-w(?P<window>\d+)"
    summary = "first S tokens (attention sinks) plus the most recent W"
    role = "eviction"

    def __post_init__(self):
        if self.sinks < 0:
            raise ValueError("sinks must be ≥ 0")
        if self.window < 1:
            raise ValueError("window must be at least 1")

    @property
    def name(self) -> str:
        return f"streaming-s{self.sinks}-w{self.window}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("token",), strategy="static", importance="position",
            compensation=("sinks_kept",), phase="both",
            params={"sinks": self.sinks, "window": self.window},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return SinkWindowLayer(step, self.sinks, self.window, make_store=make_store)

    @classmethod
    def from_match(cls, groups):
        return cls(sinks=int(groups["sinks"]), window=int(groups["window"]))
