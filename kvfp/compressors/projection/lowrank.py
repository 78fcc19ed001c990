"""``svd-rR``: per-head low-rank K/V on calibrated bases (Palu lineage, arXiv 2407.21118)."""

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

FIT_NAME = "svd-basis-v1"  # one calibration serves every rank: bases are stored whole


def fit_head_bases(capture: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per layer and KV head, the right singular vectors of pre-RoPE keys and of values.

    ``capture``: :func:`~kvfp.compressors.calibration.capture_kv` output, per layer ``k_pre`` and
    ``v`` ``(N, Hkv, T, D)``. Returns ``k_basis``/``v_basis`` ``(L, Hkv, D, D)`` (columns by
    decreasing singular value) and ``k_sv``/``v_sv`` ``(L, Hkv, D)``.
    """
    out: dict[str, list] = {"k_basis": [], "k_sv": [], "v_basis": [], "v_sv": []}
    for layer in capture:
        for name, x in (("k", layer["k_pre"]), ("v", layer["v"])):
            fits = [svd_basis(x[:, h]) for h in range(x.shape[1])]
            out[f"{name}_basis"].append(torch.stack([b for b, _ in fits]))
            out[f"{name}_sv"].append(torch.stack([s for _, s in fits]))
    return {n: torch.stack(ts) for n, ts in out.items()}


def project(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Coordinates ``(B, H, T, r)`` of ``x`` ``(B, H, T, D)`` on per-head bases ``(H, D, r)``."""
    return torch.einsum("bhtd,hdr->bhtr", x, basis)


def reconstruct(coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`project` on the basis' span: ``(B, H, T, r)`` → ``(B, H, T, D)``."""
    return torch.einsum("bhtr,hdr->bhtd", coef, basis)


class LowRankStore(ProjectedStore):
    """Per token and KV head: ``k_rank`` coordinates of the pre-RoPE key, ``v_rank`` of the value."""

    def __init__(self, step, k_basis: torch.Tensor, v_basis: torch.Tensor):
        super().__init__(step)
        self.k_basis, self.v_basis = k_basis, v_basis  # (Hkv, D, r) float32

    def encode(self, k_pre, k, v):
        return {"k": project(k_pre, self.k_basis), "v": project(v, self.v_basis)}

    def decode(self, enc, rope):
        k_pre = reconstruct(enc["k"].float(), self.k_basis)
        return rotate(k_pre, rope), reconstruct(enc["v"].float(), self.v_basis)


@dataclass(frozen=True)
class LowRankSVD(Scheme):
    """Per-head low-rank projection of the KV cache on calibrated bases.

    Every KV head of every layer has two orthonormal bases fitted once on the calibration text:
    the top ``k_rank`` right singular vectors of its pre-RoPE keys and the top ``v_rank`` of its
    values. The cache keeps each token's coordinates in those bases (model dtype) and
    reconstructs K/V on read; keys are de-rotated before projection and rotated again at their
    own position after reconstruction, so RoPE itself is never approximated.

    Follows Palu (arXiv 2407.21118): the low-rank latent is computed pre-RoPE and reconstructed
    before RoPE is applied on read. Deviations: Palu factorises the projection *weights* (SVD
    with Fisher-information rank search, optionally grouped across heads) and folds the
    reconstruction into the attention kernel; we fit bases on captured *activations* (the
    data-aware variant, which minimises exactly the cache's reconstruction error), per head
    (Palu's "M-LRD"), with one rank for all layers, and reconstruct explicitly. As for the
    quantized stores, a prefill forward attends over its own K/V exactly; decode reads the
    projected cache (StoredLayer's prefill-exact rule: the kernel reads a chunk's K/V before
    they are written). ``nbytes`` counts the coordinates only: the bases are model constants.

    ``role`` is ``"storage"``: the projection is token-local, so it commutes with token selection
    and can hold an eviction scheme's kept entries (``window-512+svd-r16``).
    """

    k_rank: int = 16
    v_rank: int = 16

    family = "svd"
    grammar = ("svd-rR | svd-rR-kK | svd-rR-vV | svd-kK-vV  (1 ≤ rank ≤ head_dim: R sets both ranks, "
               "K and V set the key and value rank)")
    pattern = r"svd(?:-r(?P<rank>\d+))?(?:-k(?P<k>\d+))?(?:-v(?P<v>\d+))?"
    summary = "per-head K/V projected on a calibrated rank-r basis (pre-RoPE keys)"
    role = "storage"

    def __post_init__(self):
        if self.k_rank < 1 or self.v_rank < 1:
            raise ValueError("ranks must be at least 1")

    @property
    def name(self) -> str:
        if self.k_rank == self.v_rank:
            return f"svd-r{self.k_rank}"
        return f"svd-k{self.k_rank}-v{self.v_rank}"

    @property
    def gene(self) -> Gene:
        k, v = self.k_rank, self.v_rank
        return Gene(
            algorithm="low_rank", granularity=("head",), strategy="static", importance="none",
            compensation=("calibration",), phase="decode",
            params={"rank": k if k == v else (k + v) / 2, "k_rank": k, "v_rank": v},
        )

    def check_model(self, model) -> None:
        _, head_dim = kv_shape(model)
        if max(self.k_rank, self.v_rank) > head_dim:
            raise KvfpError(f"{self.name}: rank exceeds this model's head_dim ({head_dim})", exit_code=2)

    def calibration(self, model) -> dict[str, torch.Tensor]:
        """The whole fit (:func:`fit_head_bases`), loaded or computed and cached on disk."""
        self.check_model(model)
        return cached_fit(model, FIT_NAME, fit_head_bases)

    def prepare(self, model) -> dict:
        fit = self.calibration(model)
        device = model_device(model)
        return {
            "k": fit["k_basis"][..., : self.k_rank].to(device),  # (L, Hkv, D, rk)
            "v": fit["v_basis"][..., : self.v_rank].to(device),
        }

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        prep = require_prep(prep, self.name)
        return partial(LowRankStore, step, prep["k"][layer_idx], prep["v"][layer_idx])

    @classmethod
    def from_match(cls, groups):
        rank, k, v = (None if groups[g] is None else int(groups[g]) for g in ("rank", "k", "v"))
        if rank is None and (k is None or v is None):
            raise ValueError("give a rank: svd-rR (both), or svd-kK-vV")
        return cls(k_rank=rank if k is None else k, v_rank=rank if v is None else v)

    @classmethod
    def canonical(cls):
        return [cls(16, 16)]  # half of kvfp-tiny's head_dim 32
