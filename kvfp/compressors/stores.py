"""Where a layer keeps its K/V entries: exactly, or encoded token by token.

A store holds ``(B, H, S, D)`` entries along the token axis ``S``, in insertion order, and can
keep a per-head subset of them (``select``). Eviction layers decide *which* entries survive;
stores decide *how* they are kept. A hybrid scheme is an eviction layer over an encoding store.

``prefill_reads_cache`` tells the layer where a multi-token forward reads its own new entries:
False (most engines' kernels attend over the chunk's K/V before writing them; also what a store
without the attribute gets) or True (llama.cpp writes them into its cache first and attention
reads them back from there, prefill included).
"""

from __future__ import annotations

import torch

from kvfp.compressors.codecs import TokenCodec


def _gather_tokens(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t``: ``(B, Ht, S, …)``, ``idx``: ``(B, Hi, S')``, each head axis 1 or H → ``(B, H, S', …)``."""
    B, H, S2 = idx.shape
    if t.shape[1] > H:  # one index row shared by all heads
        H = t.shape[1]
        idx = idx.expand(B, H, S2)
    elif t.shape[1] < H:  # entries shared by all heads, now kept per head
        t = t.expand(B, H, *t.shape[2:])
    extra = t.shape[3:]
    index = idx.view(B, H, S2, *([1] * len(extra))).expand(B, H, S2, *extra)
    return torch.gather(t, 2, index)


class ExactStore:
    """Entries at the model's own dtype."""

    prefill_reads_cache = False  # nothing to tell apart: the cache is exact

    def __init__(self):
        self.k = self.v = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)

    def keys(self) -> torch.Tensor:
        return self.k

    def values(self) -> torch.Tensor:
        return self.v

    def select(self, idx: torch.Tensor) -> None:
        self.k, self.v = _gather_tokens(self.k, idx), _gather_tokens(self.v, idx)

    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.numel() * self.k.element_size() * 2


class MirroredStore:
    """Base of stores that keep one dict of per-token encodings (token axis 2) plus decoded K/V.

    Subclasses encode and decode; this class grows, reads and subsets the two in step. The
    mirror is what the encodings decode to; ``nbytes`` (a subclass's) counts the encodings.
    """

    prefill_reads_cache = False

    def __init__(self):
        self.enc: dict[str, torch.Tensor] | None = None
        self.k_dec = self.v_dec = None

    def __len__(self) -> int:
        return 0 if self.k_dec is None else self.k_dec.shape[-2]

    def _push(self, enc: dict[str, torch.Tensor], kd: torch.Tensor, vd: torch.Tensor) -> None:
        if self.enc is None:
            self.enc, self.k_dec, self.v_dec = enc, kd, vd
        else:
            self.enc = {n: torch.cat([self.enc[n], enc[n]], dim=2) for n in enc}
            self.k_dec = torch.cat([self.k_dec, kd], dim=-2)
            self.v_dec = torch.cat([self.v_dec, vd], dim=-2)

    def keys(self) -> torch.Tensor:
        return self.k_dec

    def values(self) -> torch.Tensor:
        return self.v_dec

    def select(self, idx: torch.Tensor) -> None:
        self.enc = {n: _gather_tokens(t, idx) for n, t in self.enc.items()}
        self.k_dec, self.v_dec = _gather_tokens(self.k_dec, idx), _gather_tokens(self.v_dec, idx)


class CodecStore:
    """Entries encoded token by token (every code and scale belongs to one token), so any subset
    of tokens can be kept without re-encoding.

    A decoded mirror is grown alongside: decoding is per token, so the mirror equals decoding the
    whole store at every step, without the O(S) work per step. ``nbytes`` counts the encoded
    tensors only (what a serving kernel keeps).
    """

    def __init__(self, k_codec: TokenCodec, v_codec: TokenCodec, prefill_reads_cache: bool = False):
        self.k_codec, self.v_codec = k_codec, v_codec
        self.prefill_reads_cache = prefill_reads_cache
        self.k_enc = self.v_enc = None  # dict name -> (B, Hm, S, …)
        self.k_dec = self.v_dec = None

    def __len__(self) -> int:
        return 0 if self.k_dec is None else self.k_dec.shape[-2]

    @staticmethod
    def _cat(old, new):
        return new if old is None else {n: torch.cat([old[n], new[n]], dim=2) for n in new}

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        ke, ve = self.k_codec.encode(k), self.v_codec.encode(v)
        kd, vd = self.k_codec.decode(ke, k.dtype), self.v_codec.decode(ve, v.dtype)
        self.k_enc, self.v_enc = self._cat(self.k_enc, ke), self._cat(self.v_enc, ve)
        self.k_dec = kd if self.k_dec is None else torch.cat([self.k_dec, kd], dim=-2)
        self.v_dec = vd if self.v_dec is None else torch.cat([self.v_dec, vd], dim=-2)

    def keys(self) -> torch.Tensor:
        return self.k_dec

    def values(self) -> torch.Tensor:
        return self.v_dec

    def select(self, idx: torch.Tensor) -> None:
        self.k_enc = {n: _gather_tokens(t, idx) for n, t in self.k_enc.items()}
        self.v_enc = {n: _gather_tokens(t, idx) for n, t in self.v_enc.items()}
        self.k_dec, self.v_dec = _gather_tokens(self.k_dec, idx), _gather_tokens(self.v_dec, idx)

    def nbytes(self) -> int:
        if self.k_enc is None:
            return 0
        return self.k_codec.nbytes(self.k_enc) + self.v_codec.nbytes(self.v_enc)
