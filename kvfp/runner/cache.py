"""``KvfpCache``: a transformers ``Cache`` whose layers are a scheme's compressed layers."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from kvfp.compressors.layer import StepState
from kvfp.compressors.scheme import Scheme


class KvfpCache(Cache):
    """One scheme layer per model layer, plus the step state the runner sets before each forward.

    ``base_attn`` is the attention implementation the model had before kvfp attached ("eager" or
    "sdpa"); kvfp's attention function delegates the arithmetic to it so that ``none`` through
    kvfp reproduces the plain model bit for bit.
    """

    def __init__(self, scheme: Scheme, num_layers: int, base_attn: str, rotary=None, prep=None):
        self.scheme = scheme
        self.base_attn = base_attn
        self.step = StepState(rotary=rotary)
        layers = [scheme.make_layer(i, num_layers, self.step, prep) for i in range(num_layers)]
        super().__init__(layers=layers)

    def begin_step(self, attention_mask: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """Record the 2D mask and RoPE positions ``(B, total_slots)`` of every slot up to this forward."""
        self.step.valid = attention_mask.bool()
        self.step.positions = positions

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
