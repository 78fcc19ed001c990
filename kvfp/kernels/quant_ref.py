"""Reference integer quantization: the specification Triton kernels are tested against."""

from __future__ import annotations

import torch


def quantize_symmetric(x: torch.Tensor, bits: int, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest quantization with one scale per slice along ``dim``.

    Codes lie in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (the most negative code is unused so
    that zero maps to zero and the range is symmetric, as in LLM.int8()).

    Parameters
    ----------
    x : tensor of any shape, e.g. ``(B, H, T, D)``
    bits : 2 … 8
    dim : the axis one scale covers (``-1``: per token over head_dim)

    Returns
    -------
    codes : int8 tensor, shape of ``x``
    scale : float32 tensor, ``x``'s shape with ``dim`` reduced to 1
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, not {bits}")
    qmax = 2 ** (bits - 1) - 1
    amax = x.abs().amax(dim=dim, keepdim=True).float()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    codes = torch.round(x.float() / scale).clamp_(-qmax, qmax).to(torch.int8)
    return codes, scale


def dequantize_symmetric(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_symmetric`; computed in float32, returned in ``dtype``."""
    return (codes.float() * scale).to(dtype)
