"""ggml's block formats in PyTorch: the reference quantizers of ``ggml-quants.c`` bit for bit, and
their dequantizers.

Every format cuts the last axis into blocks of 32 values, each with an fp16 scale ``d``. Codes
are computed with ``id = 1/d`` in float32 (0 when ``d`` is 0)::

    type    bytes  code of a value x                          d                  decodes to
    q8_0    34     roundf(x * id)                             amax / 127         q·d
    q8_1    36     as q8_0; also s = fp16(d * Σq)             amax / 127         q·d
    q4_0    18     min(15, trunc(x * id + 8.5))               max / -8           (q - 8)·d
    q4_1    20     min(15, trunc((x - min) * id + 0.5))       (max - min) / 15   q·d + m
    q5_0    22     min(31, trunc(x * id + 16.5))              max / -16          (q - 16)·d
    q5_1    24     trunc((x - min) * id + 0.5)                (max - min) / 31   q·d + m
    iq4_nl  18     index of the nearest of 16 fixed levels K  fitted (below)     K[q]·d

Details that decide the bits:

* ``roundf`` rounds ties away from zero (``torch.round`` rounds them to even).
* ``max`` of q4_0/q5_0 is the *signed* value of largest magnitude (the first one on a tie), so
  ``d`` is negative when that value is positive and the extreme value gets code 0. ggml starts
  from ``max = +0.0``, so an all-zero block stores ``d = -0.0``.
* The scale used to compute the codes is the float32 ``d``; only the stored ``d`` (and ``m``, the
  float32 block minimum) is rounded to fp16 — so codes are not always the nearest level under the
  stored scale.
* q4_1 and q5_1 add 0.5 and truncate (half-up: codes are never negative).
* ``iq4_nl`` (:func:`quantize_iq4_nl`): codes index ``KVALUES_IQ4NL``; ggml's
  ``quantize_row_iq4_nl_ref`` — what its CPU backend runs to write an ``iq4_nl`` KV cache —
  maps ``x`` with ``id = 1 / (max / -127)`` to the nearest level, then stores the weighted
  least-squares scale ``d = Σ w·q·x / Σ w·q²`` (``w = x²``, float32 sums in element order) without
  re-coding (``ntry = -1``). Model-file quantization (``quantize_iq4_nl``) instead searches 15
  trial scales and re-codes (``ntry = 7``).

Dequantization is float32: ``codes * fp16(d)`` (``+ fp16(m)`` for the ``_1`` types), as
``dequantize_row_*``.

``q8_0``/``q8_1`` take a ``kernel``: ``"ref"`` (the functions above, which gguf-py reproduces
and ggml's CUDA copy kernels follow), ``"arm_neon"`` (ggml-cpu's NEON ``quantize_row_q8_0``/``_1``:
same ``id = 1/d``, ties to even) or ``"x86_avx"`` (ggml-cpu's AVX/AVX2 version: ``id = 127 / amax``
and ties to even). ggml's CPU backend uses its SIMD version both to write a ``q8_0`` KV cache and to
quantize activations for dot products (``q8_0`` for q4_0/q5_0/q8_0/iq4_nl weights or caches,
``q8_1`` for q4_1/q5_1).

Inputs are float tensors ``(…, D)`` with ``D`` a multiple of 32, converted to float32 first.
Blocks are returned as a dict: ``codes`` ``(…, D)`` (int8 for q8, uint8 otherwise: the stored
unsigned nibble/5-bit value or codebook index), ``d`` ``(…, D/32)`` float16, and ``m`` (``_1``
types) or ``s`` (q8_1) ``(…, D/32)`` float16. :func:`to_bytes` / :func:`from_bytes` convert to and
from ggml's packed block layout.

Checked bit for bit against a released x86-64 ggml build (its ``quantize_row_*_ref``,
``quantize_iq4_nl`` and ggml-cpu's AVX2 ``quantize_row_q8_0``/``_1``); the tests compare with
gguf-py. Not modelled: compilers may contract ``a*b + c`` into a fused multiply-add where ggml's C allows it
(e.g. ``x0*d + m`` in the ``_1`` dequantizers, or the iq4_nl sums, on targets with FMA), which can
move a result by one float32 ulp; this module rounds every product and sum separately, as gguf-py
does.
"""

from __future__ import annotations

import torch

QK = 32  # values per block, every format here
KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
GROUP_MAX_EPS = 1e-15  # iq4_nl: a block whose largest magnitude is below this is stored as zero

TYPES = ("q8_0", "q8_1", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
BLOCK_BYTES = {"q8_0": 34, "q8_1": 36, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}
BITS = {"q8_0": 8, "q8_1": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5, "iq4_nl": 4}
Q8_KERNELS = ("ref", "arm_neon", "x86_avx")


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``(…, D)`` → float32 ``(…, D/32, 32)``."""
    if x.shape[-1] % QK:
        raise ValueError(f"ggml block formats need the last axis to be a multiple of {QK}, not {x.shape[-1]}")
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // QK, QK)


def _check_type(qtype: str) -> None:
    if qtype not in TYPES:
        raise ValueError(f"unknown ggml type {qtype!r}; one of {', '.join(TYPES)}")


def round_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``roundf``: to nearest, ties away from zero. ``v - trunc(v)`` is exact in float32, so
    the tie test is too (``floor(|v| + 0.5)`` would round 0.49999997 up)."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """ggml's ``id = d ? 1.0f/d : 0.0f``."""
    return torch.where(d != 0, d.reciprocal(), torch.zeros_like(d))


def _over(numerator: float, t: torch.Tensor) -> torch.Tensor:
    """``numerator / t`` as one correctly rounded float32 division (torch evaluates
    ``scalar / tensor`` as ``scalar * (1 / tensor)``, two roundings)."""
    return torch.full_like(t, numerator) / t


def _signed_absmax(xb: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude per block, keeping its sign (first on ties), ``(…, nb, 1)``;
    ``+0.0`` for an all-zero block, ggml's initial value (a stored ``-0.0`` would flip d's sign)."""
    mx = xb.gather(-1, xb.abs().argmax(-1, keepdim=True))
    return torch.where(mx.abs() > 0, mx, torch.zeros_like(mx))


# -- q8_0 / q8_1 ---------------------------------------------------------------------------------


def _quantize_q8(x: torch.Tensor, kernel: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if kernel not in Q8_KERNELS:
        raise ValueError(f"unknown q8 kernel {kernel!r}; one of {', '.join(Q8_KERNELS)}")
    xb = _blocks(x)
    amax = xb.abs().amax(-1, keepdim=True)  # (…, nb, 1)
    d = amax / 127
    if kernel == "x86_avx":  # 127/amax can differ from 1/(amax/127) in the last bit
        id_ = torch.where(amax != 0, _over(127.0, amax), torch.zeros_like(amax))
    else:
        id_ = _inverse(d)
    v = xb * id_
    q = round_away(v) if kernel == "ref" else torch.round(v)
    return q, d, xb


def quantize_q8_0(x: torch.Tensor, kernel: str = "ref") -> dict[str, torch.Tensor]:
    q, d, _ = _quantize_q8(x, kernel)
    return {"codes": q.to(torch.int8).flatten(-2), "d": d.squeeze(-1).half()}


def quantize_q8_1(x: torch.Tensor, kernel: str = "ref") -> dict[str, torch.Tensor]:
    """As :func:`quantize_q8_0`, plus ``s = fp16(d * Σq)``: the integer sum times the float32
    (unrounded) ``d``, what a q8_1 dot product multiplies by the other operand's block minimum."""
    q, d, _ = _quantize_q8(x, kernel)
    total = q.sum(-1, keepdim=True)  # exact: integers below 2**24
    return {"codes": q.to(torch.int8).flatten(-2), "d": d.squeeze(-1).half(),
            "s": (total * d).squeeze(-1).half()}


def q8_1_values_and_sum(x: torch.Tensor, kernel: str = "ref") -> tuple[torch.Tensor, torch.Tensor]:
    """What a q8_1 operand carries into a dot product: the dequantized values ``(…, D)`` float32
    and the stored block sums ``s`` ``(…, D/32)`` float16."""
    blocks = quantize_q8_1(x, kernel)
    return dequantize(blocks, "q8_1"), blocks["s"]


# -- q4_0 / q5_0: symmetric, scale from the signed extreme ---------------------------------------


def _quantize_signed_max(x: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    half = 2 ** (bits - 1)
    xb = _blocks(x)
    d = _signed_absmax(xb) / -half
    q = torch.trunc(xb * _inverse(d) + (half + 0.5)).clamp(0, 2 * half - 1)
    return {"codes": q.to(torch.uint8).flatten(-2), "d": d.squeeze(-1).half()}


def quantize_q4_0(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return _quantize_signed_max(x, 4)


def quantize_q5_0(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return _quantize_signed_max(x, 5)


# -- q4_1 / q5_1: min and range ------------------------------------------------------------------


def _quantize_min_range(x: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    qmax = 2**bits - 1
    xb = _blocks(x)
    mn, mx = xb.amin(-1, keepdim=True), xb.amax(-1, keepdim=True)
    d = (mx - mn) / qmax
    q = torch.trunc((xb - mn) * _inverse(d) + 0.5).clamp(0, qmax)
    return {"codes": q.to(torch.uint8).flatten(-2), "d": d.squeeze(-1).half(), "m": mn.squeeze(-1).half()}


def quantize_q4_1(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return _quantize_min_range(x, 4)


def quantize_q5_1(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return _quantize_min_range(x, 5)


# -- iq4_nl: non-linear codebook -----------------------------------------------------------------


def _kvalues(device) -> torch.Tensor:
    return torch.tensor(KVALUES_IQ4NL, dtype=torch.float32, device=device)


def best_index_iq4nl(a: torch.Tensor) -> torch.Tensor:
    """ggml's ``best_index_int8`` over the iq4_nl codebook: the nearest level's index, the upper one
    when ``a`` lies exactly half-way (the distance test is ``a - lo < hi - a`` in float32)."""
    vals = _kvalues(a.device)
    hi_idx = torch.searchsorted(vals, a.contiguous(), right=True).clamp(1, len(vals) - 1)
    lo, hi = vals[hi_idx - 1], vals[hi_idx]
    idx = torch.where(a - lo < hi - a, hi_idx - 1, hi_idx)
    idx = torch.where(a <= vals[0], 0, idx)
    return torch.where(a >= vals[-1], len(vals) - 1, idx)


def _ordered_sum(p: torch.Tensor) -> torch.Tensor:
    """Float32 sum over the last axis, left to right, as ggml's scalar loop accumulates (torch's
    reductions pair terms differently)."""
    acc = torch.zeros_like(p[..., 0])
    for j in range(p.shape[-1]):
        acc = acc + p[..., j]
    return acc


def _weighted_fit(idx: torch.Tensor, xb: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ w·q·x`` and ``Σ w·q²`` of the levels ``q = K[idx]``, each product as ``(w*q)*…``."""
    wq = w * _kvalues(xb.device)[idx]
    return _ordered_sum(wq * xb), _ordered_sum(wq * _kvalues(xb.device)[idx])


def quantize_iq4_nl(x: torch.Tensor, ntry: int = -1) -> dict[str, torch.Tensor]:
    """``ntry = -1``: ggml's ``quantize_row_iq4_nl_ref`` (the CPU cache write); ``ntry = 7``:
    ``quantize_iq4_nl`` without an importance matrix (model files).

    Per block: weights ``w = x²``; ``max`` the signed extreme; first codes with
    ``id = 1 / (max / -127)`` (``ntry > 0``: ``1 / (max / 127)``), scale
    ``d = Σw·q·x / Σw·q²`` (0 when ``Σw·q² = 0``). ``ntry > 0`` then tries ``id = (t - 127) / max``
    for ``t = -ntry … ntry``, keeps a trial's least-squares scale when it improves
    ``(Σw·q·x)² / Σw·q²``, and re-codes with ``1 / d``. A block with ``amax < 1e-15`` gets
    ``d = 0`` and codes 0 (``ntry > 0``: 8, the level nearest 0); it decodes to zeros whatever its
    codes, and ggml releases before mainline zeroed them left the previous block's codes there.
    """
    xb = _blocks(x)
    w = xb * xb
    mx = _signed_absmax(xb)  # (…, nb, 1)
    tiny = mx.abs() < GROUP_MAX_EPS
    mx = torch.where(tiny, torch.ones_like(mx), mx)  # placeholder; tiny blocks are overwritten below
    d0 = (-mx if ntry > 0 else mx) / -127.0
    idx = best_index_iq4nl(xb * d0.reciprocal())
    sqx, sq2 = _weighted_fit(idx, xb, w)  # (…, nb)
    d = torch.where(sq2 > 0, sqx / sq2, torch.zeros_like(sqx))
    best = d * sqx
    for t in range(-ntry, ntry + 1):
        trial = best_index_iq4nl(xb * _over(t - 127.0, mx))
        tqx, tq2 = _weighted_fit(trial, xb, w)
        better = (tq2 > 0) & (tqx * tqx > best * tq2)
        d_t = tqx / torch.where(better, tq2, torch.ones_like(tq2))
        d = torch.where(better, d_t, d)
        best = torch.where(better, d_t * tqx, best)
    if ntry > 0:
        idx = best_index_iq4nl(xb * _inverse(d).unsqueeze(-1))
    tiny = tiny.squeeze(-1)
    d = torch.where(tiny, torch.zeros_like(d), d)
    idx = torch.where(tiny.unsqueeze(-1), 8 if ntry > 0 else 0, idx)
    return {"codes": idx.to(torch.uint8).flatten(-2), "d": d.half()}


# -- generic entry points ------------------------------------------------------------------------

_QUANTIZERS = {
    "q8_0": quantize_q8_0, "q8_1": quantize_q8_1, "q4_0": quantize_q4_0, "q4_1": quantize_q4_1,
    "q5_0": quantize_q5_0, "q5_1": quantize_q5_1, "iq4_nl": quantize_iq4_nl,
}


def quantize(x: torch.Tensor, qtype: str, **options) -> dict[str, torch.Tensor]:
    """Quantize ``x`` ``(…, D)`` to ``qtype`` blocks along the last axis (see the module docstring).
    ``options``: ``kernel`` for q8_0/q8_1, ``ntry`` for iq4_nl."""
    _check_type(qtype)
    return _QUANTIZERS[qtype](x, **options)


def _levels(codes: torch.Tensor, qtype: str) -> torch.Tensor:
    """The integer level each code stands for, float32 ``(…, D/32, 32)``."""
    c = codes.reshape(*codes.shape[:-1], codes.shape[-1] // QK, QK)
    if qtype == "iq4_nl":
        return _kvalues(codes.device)[c.long()]
    offset = {"q4_0": 8, "q5_0": 16}.get(qtype, 0)
    return c.float() - offset


def dequantize(blocks: dict[str, torch.Tensor], qtype: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(…, D)`` values of ``blocks``, computed in float32 as ggml's ``dequantize_row_*``, returned
    in ``dtype``."""
    _check_type(qtype)
    codes = blocks["codes"]
    y = _levels(codes, qtype) * blocks["d"].float().unsqueeze(-1)
    if "m" in blocks:
        y = y + blocks["m"].float().unsqueeze(-1)
    return y.reshape(codes.shape).to(dtype)


def fake_quantize(x: torch.Tensor, qtype: str, **options) -> torch.Tensor:
    """``x`` after a round trip through ``qtype``, float32."""
    return dequantize(quantize(x, qtype, **options), qtype)


# -- ggml's byte layout --------------------------------------------------------------------------


def _half_bytes(t: torch.Tensor) -> torch.Tensor:
    """float16 ``(…, nb)`` → uint8 ``(…, nb, 2)``, little-endian as ggml writes it on every
    platform it runs on."""
    return t.contiguous().view(torch.uint8).view(*t.shape, 2)


def _half_from(b: torch.Tensor) -> torch.Tensor:
    """uint8 ``(…, nb, 2)`` → float16 ``(…, nb)``."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def _nibbles(c: torch.Tensor) -> torch.Tensor:
    """Codes ``(…, nb, 32)`` → 16 bytes per block: byte j holds value j (low nibble) and j + 16."""
    c = c.to(torch.uint8)
    return (c[..., :16] & 0x0F) | ((c[..., 16:] & 0x0F) << 4)


def _high_bits(c: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each code ``(…, nb, 32)`` → a little-endian uint32 ``qh``: bit j for value j."""
    bits = ((c.to(torch.int64) >> 4) & 1).view(*c.shape[:-1], 4, 8)
    return (bits << torch.arange(8, device=c.device)).sum(-1).to(torch.uint8)


def to_bytes(blocks: dict[str, torch.Tensor], qtype: str) -> torch.Tensor:
    """``blocks`` in ggml's layout: uint8 ``(…, D/32 * BLOCK_BYTES[qtype])``."""
    _check_type(qtype)
    codes = blocks["codes"]
    c = codes.reshape(*codes.shape[:-1], codes.shape[-1] // QK, QK)
    parts = [_half_bytes(blocks["d"])]
    if qtype == "q8_1":
        parts.append(_half_bytes(blocks["s"]))
    if "m" in blocks:
        parts.append(_half_bytes(blocks["m"]))
    if qtype in ("q8_0", "q8_1"):
        parts.append(c.to(torch.int8).view(torch.uint8))
    else:
        if qtype in ("q5_0", "q5_1"):
            parts.append(_high_bits(c))
        parts.append(_nibbles(c))
    return torch.cat(parts, dim=-1).flatten(-2)


def from_bytes(raw: torch.Tensor, qtype: str) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_bytes`: uint8 ``(…, nb * BLOCK_BYTES[qtype])`` → blocks."""
    _check_type(qtype)
    size = BLOCK_BYTES[qtype]
    if raw.shape[-1] % size:
        raise ValueError(f"{raw.shape[-1]} bytes is not a whole number of {qtype} blocks ({size} bytes)")
    b = raw.to(torch.uint8).reshape(*raw.shape[:-1], raw.shape[-1] // size, size)
    out = {"d": _half_from(b[..., 0:2])}
    pos = 2
    if qtype == "q8_1":
        out["s"] = _half_from(b[..., 2:4])
        pos = 4
    if qtype in ("q4_1", "q5_1"):
        out["m"] = _half_from(b[..., 2:4])
        pos = 4
    if qtype in ("q8_0", "q8_1"):
        codes = b[..., pos:].contiguous().view(torch.int8)
    else:
        qs = b[..., -16:]
        codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)
        if qtype in ("q5_0", "q5_1"):
            qh = b[..., pos:pos + 4].to(torch.int64)
            bits = (qh.unsqueeze(-1) >> torch.arange(8, device=raw.device)) & 1  # (…, nb, 4, 8)
            codes = codes | (bits.flatten(-2) << 4).to(torch.uint8)
    out["codes"] = codes.flatten(-2)
    return out
