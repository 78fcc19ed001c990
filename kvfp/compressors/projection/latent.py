"""``mla-C``: one latent per token per layer shared by all KV heads, a few RoPE dims kept apart
(DeepSeek-V2 MLA, arXiv 2405.04434; converted as in MHA2MLA, arXiv 2502.14837, and TransMLA,
arXiv 2502.07864)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from kvfp.compressors.calibration import cached_fit
from kvfp.compressors.gene import Gene
from kvfp.compressors.projection.common import (
    ProjectedStore,
    kv_shape,
    model_device,
    require_prep,
    rotate,
    svd_basis,
)
from kvfp.compressors.scheme import Scheme
from kvfp.errors import KvfpError

DEFAULT_PAIRS = 2


def select_rope_pairs(k_pre: torch.Tensor, pairs: int) -> torch.Tensor:
    """The ``pairs`` RoPE frequency pairs of each head with the largest mean key 2-norm.

    ``k_pre``: ``(N, H, T, D)``; pair ``j`` is dims ``(j, j + D/2)`` (HF's half-split RoPE), and
    its norm is the same before and after rotation. Returns the kept dims ``(H, 2·pairs)``:
    the chosen pairs' first halves ascending, then their second halves.
    """
    half = k_pre.shape[-1] // 2
    norms = (k_pre[..., :half].double() ** 2 + k_pre[..., half:].double() ** 2).sqrt()  # (N, H, T, D/2)
    score = norms.mean(dim=(0, 2))  # (H, D/2)
    top = torch.argsort(score, dim=-1, descending=True, stable=True)[:, :pairs].sort(dim=-1).values
    return torch.cat([top, top + half], dim=-1)


def nope_dims(rope_idx: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Per head, the dims not kept apart, ascending: ``(H, D - 2P)``."""
    keep = torch.ones(rope_idx.shape[0], head_dim, dtype=torch.bool, device=rope_idx.device)
    keep.scatter_(1, rope_idx, False)
    return keep.nonzero()[:, 1].view(rope_idx.shape[0], -1)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, h, t, idx[h]]``: ``(B, H, T, D)``, ``(H, n)`` → ``(B, H, T, n)``."""
    B, H, T, _ = x.shape
    return torch.gather(x, -1, idx.view(1, H, 1, -1).expand(B, H, T, idx.shape[-1]))


def joint_rows(k_pre: torch.Tensor, v: torch.Tensor, nope_idx: torch.Tensor) -> torch.Tensor:
    """Per token the concatenated ``[k_nope of every head, v of every head]``: ``(B, T, F)``
    with ``F = H·(D - 2P) + H·D``, heads in order."""
    B, H, T, _ = k_pre.shape
    k_nope = _take(k_pre, nope_idx).transpose(1, 2).reshape(B, T, -1)
    return torch.cat([k_nope, v.transpose(1, 2).reshape(B, T, -1)], dim=-1)


def fit_joint_latent(capture: list[dict[str, torch.Tensor]], pairs: int, latent: int) -> dict[str, torch.Tensor]:
    """Per layer: kept RoPE dims ``rope_idx`` ``(L, H, 2P)``, the joint basis' first ``latent``
    columns ``basis`` ``(L, F, C)`` and the full spectrum ``sv`` ``(L, F)``."""
    out: dict[str, list] = {"rope_idx": [], "basis": [], "sv": []}
    for layer in capture:
        k_pre, v = layer["k_pre"], layer["v"]  # (N, H, T, D)
        rope_idx = select_rope_pairs(k_pre, pairs)
        basis, sv = svd_basis(joint_rows(k_pre, v, nope_dims(rope_idx, k_pre.shape[-1])))
        out["rope_idx"].append(rope_idx)
        out["basis"].append(basis[:, :latent])
        out["sv"].append(sv)
    return {n: torch.stack(ts) for n, ts in out.items()}


class LatentStore(ProjectedStore):
    """Per token: ``latent`` ``(B, 1, T, C)`` shared by every head, and the kept RoPE dims of
    each key head ``rope`` ``(B, H, T, 2P)`` (post-RoPE, as MLA caches its decoupled key)."""

    def __init__(self, step, basis: torch.Tensor, rope_idx: torch.Tensor):
        super().__init__(step)
        self.basis, self.rope_idx = basis, rope_idx  # (F, C) float32, (H, 2P)
        self.nope_idx = None

    def encode(self, k_pre, k, v):
        if self.nope_idx is None:
            self.nope_idx = nope_dims(self.rope_idx, k.shape[-1])
        x = joint_rows(k_pre, v, self.nope_idx)  # (B, T, F)
        return {"latent": (x @ self.basis).unsqueeze(1), "rope": _take(k, self.rope_idx)}

    def decode(self, enc, rope):
        latent = enc["latent"].float().squeeze(1)  # (B, T, C)
        x = latent @ self.basis.T  # (B, T, F)
        B, T, _ = x.shape
        H, n_nope = self.nope_idx.shape
        D = n_nope + self.rope_idx.shape[1]
        k_nope = x[..., : H * n_nope].reshape(B, T, H, n_nope).transpose(1, 2)
        v = x[..., H * n_nope:].reshape(B, T, H, D).transpose(1, 2)
        k_pre = torch.zeros(B, H, T, D, dtype=x.dtype, device=x.device)
        k_pre.scatter_(-1, self.nope_idx.view(1, H, 1, n_nope).expand(B, H, T, n_nope), k_nope)
        k = rotate(k_pre, rope)  # the kept dims are zero here: RoPE mixes only within a pair
        kept = self.rope_idx.view(1, H, 1, -1).expand(B, H, T, self.rope_idx.shape[1])
        k = k.scatter(-1, kept, enc["rope"].float())
        return k, v

    def select(self, idx):
        if idx.shape[1] != 1:
            raise ValueError("a shared latent cannot keep different tokens per head")
        super().select(idx)


@dataclass(frozen=True)
class LatentMLA(Scheme):
    """MLA-style joint latent: K (its non-RoPE part) and V of all KV heads of a layer mapped to
    one latent vector per token, shared by every head, with a few RoPE dims per key head apart.

    Calibration, per layer: for each key head, the ``rope_pairs`` RoPE frequency pairs with the
    largest mean key 2-norm are kept apart (their post-RoPE values are cached at model dtype, as
    MLA caches its decoupled RoPE key); the remaining pre-RoPE key dims of all heads and the
    values of all heads are concatenated, ``F = H·(D − 2P) + H·D`` dims per token, and the top
    ``latent`` right singular vectors of those rows form the joint down/up projection. The cache
    keeps ``latent`` coordinates per token per layer plus ``H·2P`` RoPE dims; K and V are
    reconstructed on read and the non-kept key dims rotated at their position.

    Deviations, and why: MHA2MLA removes RoPE from the non-kept dims and fine-tunes the model to
    cope; kvfp cannot fine-tune the model it fingerprints, so the reconstructed dims are rotated
    again on read (as Palu does), and only the *cache* has the MLA form. MHA2MLA ranks
    frequencies by ``‖q‖·‖k‖`` per pair (its 2-norm criterion); the calibration capture holds keys
    only, so we rank by the mean key norm. MHA2MLA's joint SVD factorises the weights
    ``[W_k_nope, W_v]``; we fit on captured activations (uncentred), which minimises the cache's
    own reconstruction error. TransMLA's RoRoPE (rotating RoPE energy into one head) is not done.
    A prefill forward attends over its own K/V exactly (StoredLayer's prefill-exact rule).
    ``nbytes`` counts the latent and the kept RoPE dims; the bases are model constants.
    """

    latent: int = 48
    rope_pairs: int = DEFAULT_PAIRS

    family = "mla"
    grammar = (f"mla-C[-rP]  (C ≥ 1 latent dims per token per layer shared by all heads; P RoPE "
               f"frequency pairs kept apart per key head, default {DEFAULT_PAIRS})")
    pattern = r"mla-(?P<latent>\d+)(?:-r(?P<pairs>\d+))?"
    summary = "K and V of all heads jointly mapped to one latent per token, a few RoPE dims kept apart"
    # standalone: the latent is shared by all heads, so it cannot hold a per-head eviction's entries

    def __post_init__(self):
        if self.latent < 1:
            raise ValueError("the latent needs at least 1 dim")
        if self.rope_pairs < 0:
            raise ValueError("rope pairs must be ≥ 0")

    @property
    def name(self) -> str:
        suffix = "" if self.rope_pairs == DEFAULT_PAIRS else f"-r{self.rope_pairs}"
        return f"mla-{self.latent}{suffix}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="latent", granularity=("layer", "head"), strategy="static", importance="none",
            compensation=("calibration",), phase="decode",
            params={"rank": self.latent, "rope_pairs": self.rope_pairs},
        )

    def check_model(self, model) -> None:
        heads, head_dim = kv_shape(model)
        if 2 * self.rope_pairs > head_dim:
            raise KvfpError(f"{self.name}: this model's keys have only {head_dim // 2} RoPE pairs", exit_code=2)
        width = heads * (head_dim - 2 * self.rope_pairs) + heads * head_dim
        if self.latent > width:
            raise KvfpError(f"{self.name}: the latent can have at most {width} dims on this model "
                            f"({heads} KV heads × (head_dim {head_dim} − {2 * self.rope_pairs} RoPE dims + "
                            f"{head_dim} value dims))", exit_code=2)

    def calibration(self, model) -> dict[str, torch.Tensor]:
        """The whole fit (:func:`fit_joint_latent`), loaded or computed and cached on disk."""
        self.check_model(model)
        return cached_fit(model, self.fit_name, partial(fit_joint_latent, pairs=self.rope_pairs, latent=self.latent))

    @property
    def fit_name(self) -> str:
        return f"mla-c{self.latent}-r{self.rope_pairs}-v1"

    def prepare(self, model) -> dict:
        fit = self.calibration(model)
        device = model_device(model)
        return {"basis": fit["basis"].to(device), "rope_idx": fit["rope_idx"].to(device)}

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        prep = require_prep(prep, self.name)
        return partial(LatentStore, step, prep["basis"][layer_idx], prep["rope_idx"][layer_idx])

    @classmethod
    def from_match(cls, groups):
        pairs = DEFAULT_PAIRS if groups["pairs"] is None else int(groups["pairs"])
        return cls(latent=int(groups["latent"]), rope_pairs=pairs)

    @classmethod
    def canonical(cls):
        # kvfp-tiny: 48 latent + 2 heads × 4 RoPE dims = 56 of 128 dims per token per layer
        return [cls(48, DEFAULT_PAIRS)]
