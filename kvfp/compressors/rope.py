"""Undo and redo rotary position embeddings, for schemes that work on pre-RoPE keys
(KVQuant's per-channel keys, low-rank and latent projections)."""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(rotary, x: torch.Tensor, positions: torch.Tensor):
    """cos/sin ``(B, 1, T, D)`` for ``positions`` ``(B, T)`` from the model's rotary module."""
    cos, sin = rotary(x, positions)
    return cos.unsqueeze(1).to(torch.float32), sin.unsqueeze(1).to(torch.float32)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, D)`` (the HF/Llama half-split convention)."""
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def undo_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_rope`: a rotation by the opposite angle."""
    xf = x.float()
    return (xf * cos - _rotate_half(xf) * sin).to(x.dtype)
