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


# -- asymmetric (zero point) integer codes ---------------------------------------------------


def quantize_asymmetric(x: torch.Tensor, bits: int, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (min/max, zero point) round-to-nearest quantization, one range per slice along ``dim``.

    ``x ≈ codes * scale + mn`` with codes in ``[0, 2**bits - 1]``: the slice's minimum and maximum
    are grid points, so every element is within ``scale / 2`` of its reconstruction. The offset is
    kept as a float minimum (KIVI's ``mn``) rather than an integer zero point.

    Parameters
    ----------
    x : tensor of any shape, e.g. ``(B, H, T, D)``
    bits : 1 … 8
    dim : the axis one (scale, mn) pair covers

    Returns
    -------
    codes : uint8 tensor, shape of ``x``
    scale, mn : float32 tensors, ``x``'s shape with ``dim`` reduced to 1 (a constant slice gets
        scale 1 and is reconstructed exactly from ``mn``)
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, not {bits}")
    qmax = 2**bits - 1
    xf = x.float()
    mn = xf.amin(dim=dim, keepdim=True)
    mx = xf.amax(dim=dim, keepdim=True)
    scale = (mx - mn) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((xf - mn) / scale).clamp_(0, qmax).to(torch.uint8)
    return codes, scale, mn


def dequantize_asymmetric(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor,
                          dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_asymmetric`; computed in float32, returned in ``dtype``."""
    return (codes.float() * scale + mn).to(dtype)


def quantize_asymmetric_groups(x: torch.Tensor, bits: int, group: int):
    """Asymmetric quantization in groups of ``group`` consecutive channels of the last axis.

    ``x``: ``(…, D)`` with ``D % group == 0``. Returns codes ``(…, D)`` uint8 and scale, mn
    ``(…, D // group)`` float32.
    """
    D = x.shape[-1]
    if group < 1 or D % group:
        raise ValueError(f"group size {group} does not divide head_dim {D}")
    codes, scale, mn = quantize_asymmetric(x.reshape(*x.shape[:-1], D // group, group), bits)
    return codes.reshape(x.shape), scale.squeeze(-1), mn.squeeze(-1)


def dequantize_asymmetric_groups(codes, scale, mn, dtype):
    """Inverse of :func:`quantize_asymmetric_groups`."""
    D, n = codes.shape[-1], scale.shape[-1]
    grouped = codes.reshape(*codes.shape[:-1], n, D // n)
    return dequantize_asymmetric(grouped, scale.unsqueeze(-1), mn.unsqueeze(-1), dtype).reshape(codes.shape)


# -- clipped symmetric codes -----------------------------------------------------------------


def quantize_symmetric_clipped(x: torch.Tensor, bits: int, clip: torch.Tensor):
    """Symmetric codes whose range is ``[-clip, clip]`` instead of the slice's absmax.

    ``clip`` broadcasts against ``x`` with the last axis reduced (``(…, 1)``); values beyond it
    saturate at the largest code. Returns codes (int8, shape of ``x``) and scale ``clip / qmax``.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, not {bits}")
    qmax = 2 ** (bits - 1) - 1
    clip = clip.float()
    scale = torch.where(clip > 0, clip / qmax, torch.ones_like(clip))
    codes = torch.round(x.float() / scale).clamp_(-qmax, qmax).to(torch.int8)
    return codes, scale


def mse_clip(x: torch.Tensor, bits: int, ratios: tuple[float, ...]) -> torch.Tensor:
    """Per token (last axis), the clip value ``r * absmax`` over ``r`` in ``ratios`` that minimises
    the squared reconstruction error of :func:`quantize_symmetric_clipped`; ties go to the earlier
    ratio. Returns ``(…, 1)`` float32."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    best_err = best_clip = None
    for r in ratios:
        clip = amax * r
        codes, scale = quantize_symmetric_clipped(x, bits, clip)
        err = ((codes.float() * scale - x.float()) ** 2).sum(-1, keepdim=True)
        if best_err is None:
            best_err, best_clip = err, clip
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_clip = torch.where(better, clip, best_clip)
    return best_clip


# -- non-uniform level sets ------------------------------------------------------------------


def log_levels(bits: int, per_octave: int = 2) -> torch.Tensor:
    """The sign-symmetric log-domain level set on ``[-1, 1]``: zero and ``±2**(-k / per_octave)``
    for ``k = 0 … 2**(bits-1) - 2`` — ``2**bits - 1`` levels, ascending, float32."""
    n = 2 ** (bits - 1) - 1
    mags = 2.0 ** (-torch.arange(n, dtype=torch.float64) / per_octave)
    return torch.cat([-mags, torch.zeros(1, dtype=torch.float64), mags.flip(0)]).float().sort().values


def quantize_to_levels(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index (uint8) of the nearest of ``levels`` (ascending, 1-D, at most 256) for every element
    of ``z``; an exact midpoint goes to the lower level."""
    lv = levels.to(z.device, torch.float32)
    mids = (lv[1:] + lv[:-1]) / 2
    return torch.bucketize(z.float().contiguous(), mids).to(torch.uint8)


def dequantize_levels(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``levels[codes]`` in float32."""
    return levels.to(codes.device, torch.float32)[codes.long()]


# -- floating-point codes --------------------------------------------------------------------

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def quantize_fp8(x: torch.Tensor, fmt: str, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Cast ``x / scale`` to FP8 (``fmt`` ``"e4m3"`` = ``float8_e4m3fn`` or ``"e5m2"``), saturating at
    the format's largest finite value as serving kernels do. Returns the bit patterns as uint8."""
    dt = FP8_DTYPES[fmt]
    fmax = torch.finfo(dt).max
    y = (x.float() / scale).clamp(-fmax, fmax)
    return y.to(dt).view(torch.uint8)


def dequantize_fp8(codes: torch.Tensor, fmt: str, scale: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8`."""
    return (codes.view(FP8_DTYPES[fmt]).float() * scale).to(dtype)


E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # the FP4 (E2M1) magnitudes


def quantize_fp4_e2m1(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4-style FP4: blocks of ``block`` consecutive channels of the last axis, each with a
    scale ``absmax / 6`` stored as FP8 E4M3, values rounded to the nearest E2M1 value (ties to
    the even code) after division by the stored scale, saturating at ±6.

    ``x``: ``(…, D)``, ``D % block == 0``. Returns codes ``(…, D)`` uint8 (bit 3 = sign, bits
    0–2 = index into :data:`E2M1_GRID`) and scales ``(…, D // block)`` as E4M3 bit patterns (uint8).
    A block whose scale rounds to zero in E4M3 decodes to zeros.
    """
    D = x.shape[-1]
    if block < 1 or D % block:
        raise ValueError(f"block size {block} does not divide head_dim {D}")
    xb = x.float().reshape(*x.shape[:-1], D // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    s8 = (amax / 6.0).clamp(max=448.0).to(torch.float8_e4m3fn)
    s = s8.float()
    a = torch.where(s > 0, xb.abs() / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(xb))
    grid = torch.tensor(E2M1_GRID, device=x.device)
    mids = (grid[1:] + grid[:-1]) / 2
    idx = torch.bucketize(a.clamp(max=6.0).contiguous(), mids)  # a midpoint goes to the lower level
    tie = (idx < 7) & (a == mids[idx.clamp(max=6)]) & (idx % 2 == 1)
    idx = idx + tie.long()
    codes = (idx | ((xb < 0) & (idx > 0)).long() << 3).to(torch.uint8)
    return codes.reshape(x.shape), s8.squeeze(-1).view(torch.uint8)


def dequantize_fp4_e2m1(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_fp4_e2m1`."""
    D, n = codes.shape[-1], scales.shape[-1]
    grid = torch.tensor(E2M1_GRID, device=codes.device)
    c = codes.long()
    mag = grid[c & 7]
    val = torch.where((c & 8) > 0, -mag, mag).reshape(*codes.shape[:-1], n, D // n)
    s = scales.view(torch.float8_e4m3fn).float().unsqueeze(-1)
    return (val * s).reshape(codes.shape).to(dtype)


def quantize_asymmetric_flat_groups(x: torch.Tensor, bits: int, group: int):
    """Groups as optimum-quanto forms them for ``axis=0``: each batch row of ``x`` ``(B, …)`` is
    flattened in memory order and cut into consecutive groups of ``group`` elements, each with its
    own (scale, mn). For a ``(B, H, T, D)`` cache this is along head_dim when ``group <= D`` and
    spans ``group / D`` consecutive tokens of a head when ``group > D``. A last partial group is
    padded by repeating its last element (quanto refuses such shapes instead).

    Returns codes (uint8, shape of ``x``) and scale, mn ``(B, n_groups)`` float32.
    """
    B = x.shape[0]
    flat = x.float().reshape(B, -1)
    n = flat.shape[1]
    pad = (-n) % group
    if pad:
        flat = torch.cat([flat, flat[:, -1:].expand(B, pad)], dim=1)
    codes, scale, mn = quantize_asymmetric(flat.view(B, -1, group), bits)
    return codes.view(B, -1)[:, :n].reshape(x.shape), scale.squeeze(-1), mn.squeeze(-1)


def dequantize_asymmetric_flat_groups(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int,
                                      dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_asymmetric_flat_groups`."""
    B = codes.shape[0]
    flat = codes.reshape(B, -1)
    n, ng = flat.shape[1], scale.shape[1]
    flat = torch.cat([flat, flat.new_zeros(B, ng * group - n)], dim=1).view(B, ng, group)
    out = dequantize_asymmetric(flat, scale.unsqueeze(-1), mn.unsqueeze(-1), dtype)
    return out.reshape(B, -1)[:, :n].reshape(codes.shape)
