"""Stores for schemes whose codes are not token-local: per-channel blocks (KIVI keys,
``intB-perchannel``), a sliding full-precision residual (KIVI values) and HF's whole-history
re-quantization.

Each store is a pair of *sides* (one for K, one for V) sharing the store contract of
:mod:`kvfp.compressors.stores` (``append``, ``keys``, ``values``, ``select``, ``nbytes``). Every
entry keeps its own codes and a pointer to the group whose scale it uses, so that ``select`` can
keep any per-head subset of entries (an eviction scheme over these stores): a group's scale stays
as long as one of its members does.

``view`` is what attention sees at the step of the latest ``append``: the stored state *before*
any flush that this append triggers (KIVI and HF attend the just-completed residual at full
precision, then quantize it). ``nbytes`` counts the state after the flush.

Groups and residuals are defined by *arrival order* (the n-th entry ever appended), not by the
current position of an entry, so an eviction in between changes which members a group has but
never which group an entry belongs to.
"""

from __future__ import annotations

import torch

from kvfp.compressors.codecs import TokenCodec
from kvfp.compressors.stores import _gather_tokens
from kvfp.kernels.quant_ref import dequantize_asymmetric_flat_groups, quantize_asymmetric_flat_groups

POINTER_BYTES = 4  # an int32 per entry and head, once entries were selected (before, positions imply groups)


def _distinct_nonneg(ids: torch.Tensor) -> int:
    """Number of distinct values ``>= 0`` in each row of ``ids`` ``(…, S)``, summed over rows."""
    if ids.shape[-1] == 0:
        return 0
    s = ids.sort(dim=-1).values
    first = (s[..., :1] >= 0).sum()
    rest = ((s[..., 1:] != s[..., :-1]) & (s[..., 1:] >= 0)).sum()
    return int(first + rest)


class ChannelBlocks:
    """Per-channel asymmetric codes: one (scale, mn) per channel for every group of ``group``
    consecutive arrivals; entries stay at full precision until their block of ``block`` arrivals
    (a multiple of ``group``) is complete, then the whole block is quantized (KIVI's keys).

    State: ``dec`` ``(B, H, S, D)`` (dequantized or exact), ``codes`` uint8 ``(B, H, S, D)``,
    ``gid`` ``(B, H, S)`` the group of each entry, ``exact`` ``(B, H, S)``, and the group table
    ``scale``, ``mn`` ``(B, H, n_groups, D)`` float32.
    """

    def __init__(self, bits: int, group: int, block: int):
        if block % group:
            raise ValueError(f"block {block} is not a multiple of group {group}")
        self.bits, self.group, self.block = bits, group, block
        self.dec = self.view = self.codes = self.gid = self.exact = None
        self.scale = self.mn = None
        self.n_arr = 0
        self.selected = False

    def __len__(self) -> int:
        return 0 if self.dec is None else self.dec.shape[-2]

    def append(self, x: torch.Tensor) -> None:
        B, H, q, D = x.shape
        gid = ((self.n_arr + torch.arange(q, device=x.device)) // self.group).view(1, 1, q).expand(B, H, q)
        exact = torch.ones(B, H, q, dtype=torch.bool, device=x.device)
        codes = torch.zeros(B, H, q, D, dtype=torch.uint8, device=x.device)
        if self.dec is None:
            self.dec, self.gid, self.exact, self.codes = x, gid, exact, codes
            self.scale = self.mn = torch.zeros(B, H, 0, D, device=x.device)
        else:
            self.dec = torch.cat([self.dec, x], dim=-2)
            self.gid = torch.cat([self.gid, gid], dim=-1)
            self.exact = torch.cat([self.exact, exact], dim=-1)
            self.codes = torch.cat([self.codes, codes], dim=-2)
        self.view = self.dec
        self.n_arr += q
        self._flush()

    def _flush(self) -> None:
        done = (self.n_arr // self.block) * self.block // self.group  # groups whose block is complete
        old = self.scale.shape[2]
        if done == old:
            return
        B, H, S, D = self.dec.shape
        W = min(S, self.n_arr - old * self.group)  # unflushed entries are the trailing ones
        xw = self.dec[:, :, S - W:].float()
        gw = self.gid[:, :, S - W:]
        m = self.exact[:, :, S - W:] & (gw < done)  # (B, H, W)
        n_new = done - old
        row = torch.where(m, gw - old, torch.full_like(gw, n_new)).unsqueeze(-1).expand(B, H, W, D)
        lo = torch.full((B, H, n_new + 1, D), float("inf"), device=xw.device)
        hi = torch.full((B, H, n_new + 1, D), float("-inf"), device=xw.device)
        lo = lo.scatter_reduce(2, row, xw, "amin")[:, :, :n_new]
        hi = hi.scatter_reduce(2, row, xw, "amax")[:, :, :n_new]
        empty = torch.isinf(lo)  # every member of the group was evicted before it was flushed
        lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
        qmax = 2**self.bits - 1
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        pad1 = torch.ones(B, H, 1, D, device=xw.device)
        s_e = torch.cat([scale, pad1], 2).gather(2, row)
        m_e = torch.cat([lo, pad1 * 0], 2).gather(2, row)
        codes = torch.round((xw - m_e) / s_e).clamp_(0, qmax).to(torch.uint8)
        deq = (codes.float() * s_e + m_e).to(self.dec.dtype)
        mm = m.unsqueeze(-1)
        self.codes = torch.cat([self.codes[:, :, : S - W], torch.where(mm, codes, self.codes[:, :, S - W:])], dim=-2)
        self.dec = torch.cat([self.dec[:, :, : S - W], torch.where(mm, deq, self.dec[:, :, S - W:])], dim=-2)
        self.exact = torch.cat([self.exact[:, :, : S - W], self.exact[:, :, S - W:] & ~m], dim=-1)
        self.scale = torch.cat([self.scale, scale], dim=2)
        self.mn = torch.cat([self.mn, lo], dim=2)

    def select(self, idx: torch.Tensor) -> None:
        self.dec, self.view = _gather_tokens(self.dec, idx), _gather_tokens(self.view, idx)
        self.codes, self.gid = _gather_tokens(self.codes, idx), _gather_tokens(self.gid, idx)
        self.exact = _gather_tokens(self.exact, idx)
        self.selected = True

    def nbytes(self) -> int:
        """Exact entries at the model's dtype; quantized ones as packed codes; (scale, mn) float32
        per channel of every group with a kept member; a group pointer per quantized entry once
        entries were selected (evicted entries leave gaps, so positions no longer imply groups)."""
        if self.dec is None:
            return 0
        D, item = self.dec.shape[-1], self.dec.element_size()
        n_exact = int(self.exact.sum())
        n_q = self.exact.numel() - n_exact
        groups = _distinct_nonneg(torch.where(self.exact, -1, self.gid))
        ptr = n_q * POINTER_BYTES if self.selected else 0
        return n_exact * D * item + n_q * D * self.bits // 8 + groups * D * 8 + ptr


class TokenResidual:
    """Per-token codes from ``codec``, except for the ``residual`` most recent arrivals, which stay
    at full precision; an entry is quantized as soon as it leaves that sliding window (KIVI's values).

    Codes are computed at append time (they depend on the token alone) and take over from the exact
    values at the flush.
    """

    def __init__(self, codec: TokenCodec, residual: int):
        self.codec, self.residual = codec, residual
        self.dec = self.view = self.enc = self.exact = self.arr = None
        self.n_arr = 0

    def __len__(self) -> int:
        return 0 if self.dec is None else self.dec.shape[-2]

    def append(self, x: torch.Tensor) -> None:
        B, H, q, D = x.shape
        enc = self.codec.encode(x)
        arr = (self.n_arr + torch.arange(q, device=x.device)).view(1, 1, q).expand(B, H, q)
        exact = torch.ones(B, H, q, dtype=torch.bool, device=x.device)
        if self.dec is None:
            self.dec, self.enc, self.exact, self.arr = x, enc, exact, arr
        else:
            self.dec = torch.cat([self.dec, x], dim=-2)
            self.enc = {n: torch.cat([self.enc[n], enc[n]], dim=2) for n in enc}
            self.exact = torch.cat([self.exact, exact], dim=-1)
            self.arr = torch.cat([self.arr, arr], dim=-1)
        self.view = self.dec
        self.n_arr += q
        self._flush(q)

    def _flush(self, q: int) -> None:
        S = len(self)
        W = min(S, q + self.residual)  # only the last q + residual arrivals can leave the window now
        m = self.exact[:, :, S - W:] & (self.arr[:, :, S - W:] < self.n_arr - self.residual)
        if not bool(m.any()):
            return
        decoded = self.codec.decode({n: t[:, :, S - W:] for n, t in self.enc.items()}, self.dec.dtype)
        mixed = torch.where(m.unsqueeze(-1), decoded, self.dec[:, :, S - W:])
        self.dec = torch.cat([self.dec[:, :, : S - W], mixed], dim=-2)
        self.exact = torch.cat([self.exact[:, :, : S - W], self.exact[:, :, S - W:] & ~m], dim=-1)

    def select(self, idx: torch.Tensor) -> None:
        self.dec, self.view = _gather_tokens(self.dec, idx), _gather_tokens(self.view, idx)
        self.enc = {n: _gather_tokens(t, idx) for n, t in self.enc.items()}
        self.exact, self.arr = _gather_tokens(self.exact, idx), _gather_tokens(self.arr, idx)

    def nbytes(self) -> int:
        """Exact entries at the model's dtype, the others at their codec's size (codes, scales)."""
        if self.dec is None:
            return 0
        D, item = self.dec.shape[-1], self.dec.element_size()
        n_exact = int(self.exact.sum())
        n_q = self.exact.numel() - n_exact
        per_entry = self.codec.nbytes({n: t[:1, :1, :1] for n, t in self.enc.items()})
        return n_exact * D * item + n_q * per_entry


class Requant:
    """HF ``QuantizedLayer`` semantics on one of K or V.

    The first append (prefill) is quantized whole, with no residual. Later entries accumulate at
    full precision; when ``residual_count + new >= residual`` the whole history — dequantized
    codes, residual and the new entries — is quantized again from scratch. Groups are those of
    optimum-quanto's default ``axis=0`` (:func:`~kvfp.kernels.quant_ref.quantize_asymmetric_flat_groups`):
    ``group`` consecutive elements in memory order of each batch row ``(H, S, D)``, i.e. along
    head_dim, spanning ``group / D`` consecutive tokens of a head when ``group > D``.

    The residual counts arrivals since the last re-quantization, so entries evicted from it (in a
    hybrid) do not postpone the next one.
    """

    def __init__(self, bits: int, group: int, residual: int):
        self.bits, self.group, self.residual = bits, group, residual
        self.dec = self.view = self.codes = self.gptr = self.exact = None
        self.scale = self.mn = None
        self.n_since = 0
        self.selected = False

    def __len__(self) -> int:
        return 0 if self.dec is None else self.dec.shape[-2]

    def append(self, x: torch.Tensor) -> None:
        B, H, q, D = x.shape
        if self.dec is None:
            self.view = x
            self._requantize(x)
            return
        self.view = torch.cat([self.dec, x], dim=-2)
        if self.n_since + q >= self.residual:
            self._requantize(self.view)
            return
        self.dec = self.view
        self.codes = torch.cat([self.codes, torch.zeros(B, H, q, D, dtype=torch.uint8, device=x.device)], dim=-2)
        self.gptr = torch.cat([self.gptr, torch.zeros(B, H, q, dtype=torch.long, device=x.device)], dim=-1)
        self.exact = torch.cat([self.exact, torch.ones(B, H, q, dtype=torch.bool, device=x.device)], dim=-1)
        self.n_since += q

    def _requantize(self, t: torch.Tensor) -> None:
        B, H, S, D = t.shape
        G = self.group
        if D % G and G % D:
            raise ValueError(f"group size {G} must divide head_dim {D} or be a multiple of it")
        self.codes, self.scale, self.mn = quantize_asymmetric_flat_groups(t, self.bits, G)
        self.dec = dequantize_asymmetric_flat_groups(self.codes, self.scale, self.mn, G, t.dtype)
        first = (torch.arange(H, device=t.device).view(H, 1) * S + torch.arange(S, device=t.device)) * D
        self.gptr = (first // G).view(1, H, S).expand(B, H, S)  # first group of each entry
        self.exact = torch.zeros(B, H, S, dtype=torch.bool, device=t.device)
        self.n_since = 0

    def select(self, idx: torch.Tensor) -> None:
        self.dec, self.view = _gather_tokens(self.dec, idx), _gather_tokens(self.view, idx)
        self.codes, self.gptr = _gather_tokens(self.codes, idx), _gather_tokens(self.gptr, idx)
        self.exact = _gather_tokens(self.exact, idx)
        self.selected = True

    def nbytes(self) -> int:
        """Residual entries at the model's dtype; quantized entries as packed codes; (scale, mn)
        float32 for every group with a kept member; when groups span tokens (``group > D``) and
        entries were selected, a group pointer per quantized entry."""
        if self.dec is None:
            return 0
        B = self.dec.shape[0]
        D, item = self.dec.shape[-1], self.dec.element_size()
        n_exact = int(self.exact.sum())
        n_q = self.exact.numel() - n_exact
        firsts = _distinct_nonneg(torch.where(self.exact, -1, self.gptr).reshape(B, -1))
        groups = firsts * max(1, D // self.group)
        ptr = n_q * POINTER_BYTES if self.selected and self.group > D else 0
        return n_exact * D * item + n_q * D * self.bits // 8 + groups * 8 + ptr


class SideStore:
    """A K side and a V side behind the store contract of :mod:`kvfp.compressors.stores`."""

    prefill_reads_cache = False

    def __init__(self, k_side, v_side):
        self.k_side, self.v_side = k_side, v_side

    def __len__(self) -> int:
        return len(self.k_side)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_side.append(k)
        self.v_side.append(v)

    def keys(self) -> torch.Tensor:
        return self.k_side.view

    def values(self) -> torch.Tensor:
        return self.v_side.view

    def select(self, idx: torch.Tensor) -> None:
        self.k_side.select(idx)
        self.v_side.select(idx)

    def nbytes(self) -> int:
        return self.k_side.nbytes() + self.v_side.nbytes()
