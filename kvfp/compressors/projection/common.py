"""What the projection schemes share: calibrated orthonormal bases, and a store that keeps each
token's K/V as coordinates in such a basis, keys projected before RoPE and rotated again on read.

A projection is token-local (each token's coordinates depend on that token alone), so the store
can keep any subset of tokens (``select``) just as :class:`~kvfp.compressors.stores.CodecStore`
does. Unlike a codec it needs every token's RoPE position, which it reads from the layer's
:class:`~kvfp.compressors.layer.StepState`.
"""

from __future__ import annotations

import torch

from kvfp.compressors.layer import StepState
from kvfp.compressors.rope import apply_rope, rope_cos_sin, undo_rope
from kvfp.compressors.stores import MirroredStore
from kvfp.errors import KvfpError


def svd_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right singular vectors and singular values of the rows of ``x``.

    ``x``: ``(..., F)``, flattened to ``(N, F)`` rows. Returns ``basis`` ``(F, F)`` float32 whose
    columns are the right singular vectors in order of decreasing singular value, and ``sv``
    ``(F,)`` float64 (zeros past ``min(N, F)``). The rows are not centred: a rank-r projection
    ``x @ basis[:, :r]`` then has squared Frobenius error ``sum(sv[r:] ** 2)`` exactly.

    Computed from the float64 Gram matrix (``F × F``, cheap for any number of rows); each
    vector's sign is fixed (largest-magnitude entry positive) so that a fit is reproducible.
    """
    x64 = x.reshape(-1, x.shape[-1]).double()
    gram = x64.T @ x64  # (F, F)
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    order = torch.argsort(evals, descending=True, stable=True)
    evals, evecs = evals[order].clamp(min=0), evecs[:, order]
    pivot = evecs.abs().argmax(dim=0)
    signs = torch.sign(evecs[pivot, torch.arange(evecs.shape[1])])
    evecs = evecs * torch.where(signs == 0, 1.0, signs)
    return evecs.float(), evals.sqrt()


def kv_shape(model) -> tuple[int, int]:
    """``(num_key_value_heads, head_dim)`` of a transformers model."""
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return heads, head_dim


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def require_prep(prep, name: str) -> dict:
    if prep is None:
        raise KvfpError(f"{name} is calibrated: attach it through kvfp.runner (which calls prepare)")
    return prep


class ProjectedStore(MirroredStore):
    """Entries kept as per-token coordinates (model dtype) plus a decoded mirror.

    Subclasses implement ``encode(k_pre, k, v)`` (all float32 ``(B, H, q, D)``: pre-RoPE keys,
    post-RoPE keys, values → dict of float32 tensors whose third axis is ``q``) and
    ``decode(enc, rope)`` (→ float32 post-RoPE keys and values). Coordinates are cast to the
    model's dtype before they are decoded, so the mirror is exactly what the stored coordinates
    give. ``nbytes`` counts the coordinates only; the bases are model constants (in a serving
    engine they are folded into the projection weights) and the mirror is a convenience.
    """

    def __init__(self, step: StepState):
        super().__init__()
        self.step = step
        self.appended = 0  # slots appended so far (the offset of the next token's position)

    def _rope(self, k: torch.Tensor):
        """cos/sin ``(B, 1, q, D)`` at the new tokens' positions; None when the model has no RoPE."""
        if self.step.rotary is None:
            return None
        q = k.shape[-2]
        pos = self.step.positions
        if pos is None:  # the runner's own rule: positions count real tokens only
            pos = (self.step.valid.long().cumsum(-1) - 1).clamp(min=0)
        pos = pos[:, self.appended:self.appended + q].to(k.device)
        return rope_cos_sin(self.step.rotary, k, pos)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        rope = self._rope(k)
        self.appended += k.shape[-2]
        kf = k.float()
        k_pre = kf if rope is None else undo_rope(kf, *rope)
        enc = {n: t.to(k.dtype) for n, t in self.encode(k_pre, kf, v.float()).items()}
        kd, vd = self.decode(enc, rope)
        self._push(enc, kd.to(k.dtype), vd.to(v.dtype))

    def nbytes(self) -> int:
        if self.enc is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self.enc.values())

    # -- what subclasses implement ------------------------------------------------------------
    def encode(self, k_pre, k, v) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, enc, rope) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def rotate(k_pre: torch.Tensor, rope) -> torch.Tensor:
    """Apply RoPE (``rope`` = ``(cos, sin)`` or None for a model without it) to float32 keys."""
    return k_pre if rope is None else apply_rope(k_pre, *rope)
