"""Layers that store K/V as integer codes plus scales."""

from __future__ import annotations

import torch

from kvfp.compressors.layer import KvfpLayer, StepState, tensor_bytes
from kvfp.kernels import dequantize_symmetric, quantize_symmetric


class PerTokenQuantLayer(KvfpLayer):
    """Symmetric integer codes, one scale per token per KV head over head_dim.

    As in vLLM-style serving, a multi-token forward (prefill) attends over its own chunk at full
    precision — the kernel reads the freshly projected K/V — while everything read back from the
    cache, including the current token during decode, is dequantized. So prefill logits are
    exact and the mark appears from the first decode step on (gene phase ``decode``).
    """

    def __init__(self, step: StepState, bits: int):
        super().__init__(step)
        self.bits = bits
        self.clear()

    def clear(self) -> None:
        self.k_codes = self.k_scale = self.v_codes = self.v_scale = None
        self.slots = self.valid = None
        # Dequantized mirror, grown token by token: dequantization is per token, so this equals
        # dequantizing the whole cache every step, without the O(S) work per step.
        self.k_deq = self.v_deq = None

    def store(self, k, v, slots, valid):
        kc, ks = quantize_symmetric(k, self.bits)
        vc, vs = quantize_symmetric(v, self.bits)
        kd, vd = dequantize_symmetric(kc, ks, k.dtype), dequantize_symmetric(vc, vs, v.dtype)
        old_k, old_v = self.k_deq, self.v_deq
        new = (kc, ks, vc, vs, kd, vd, slots[:, :1], valid[:, :1])
        names = ("k_codes", "k_scale", "v_codes", "v_scale", "k_deq", "v_deq", "slots", "valid")
        for name, t in zip(names, new):
            old = getattr(self, name)
            setattr(self, name, t if old is None else torch.cat([old, t], dim=-1 if name in ("slots", "valid") else -2))
        if k.shape[-2] > 1:  # prefill chunk: its own K/V exact, history from the cache
            if old_k is not None:
                k, v = torch.cat([old_k, k], dim=-2), torch.cat([old_v, v], dim=-2)
            return k, v, self.slots, self.valid
        return self.k_deq, self.v_deq, self.slots, self.valid

    def nbytes(self) -> int:
        # codes of < 8 bits are counted packed, as a real kernel stores them
        codes = 0 if self.k_codes is None else 2 * self.k_codes.numel() * self.bits // 8
        return codes + tensor_bytes(self.k_scale, self.v_scale)
