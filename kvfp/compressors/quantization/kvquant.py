"""``kvquant-B[-oP][-sN]``: KVQuant-style K/V (Hooper et al., arXiv 2401.18079).

Pre-RoPE per-channel keys, per-token values, non-uniform levels fitted on calibration data,
dense-and-sparse outliers kept exact, and the attention-sink token kept at full precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from kvfp.compressors.calibration import cached_fit
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import NOOP_BITS, check_bits
from kvfp.compressors.rope import apply_rope, rope_cos_sin, undo_rope
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.stored import StoredLayer
from kvfp.compressors.stores import MirroredStore
from kvfp.kernels.quant_ref import dequantize_levels, quantize_to_levels

OUTLIER_INDEX_BYTES = 4  # an int32 position per sparse outlier, beside its value


# -- calibration ------------------------------------------------------------------------------


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 100) -> torch.Tensor:
    """Deterministic 1-D k-means (Lloyd): ``k`` ascending centroids of ``x``'s values.

    Centroids start at the ``(i + 0.5) / k`` quantiles. On sorted data every cluster is a
    contiguous run, so each iteration is a search for the boundaries and prefix sums.
    """
    xs = x.flatten().double().sort().values
    n = xs.numel()
    cs = torch.cat([torch.zeros(1, dtype=torch.float64), xs.cumsum(0)])
    c = xs[((torch.arange(k) + 0.5) / k * (n - 1)).round().long()].clone()
    for _ in range(iters):
        inner = torch.searchsorted(xs, (c[1:] + c[:-1]) / 2, right=True)  # ties go to the lower one
        edges = torch.cat([torch.zeros(1, dtype=torch.long), inner, torch.full((1,), n)])
        cnt = edges[1:] - edges[:-1]
        sums = cs[edges[1:]] - cs[edges[:-1]]
        new = torch.where(cnt > 0, sums / cnt.clamp(min=1), c).sort().values
        if torch.equal(new, c):
            break
        c = new
    return c.float()


def n_value_outliers(frac: float, D: int) -> int:
    """Sparse entries per value vector: none for ``frac = 0``, else ``max(1, round(frac * D))``."""
    return 0 if frac == 0 else max(1, round(frac * D))


def normalize_values(v: torch.Tensor, n_out: int):
    """Per token: the ``n_out`` largest-magnitude entries are outliers; the others are mapped to
    ``[-1, 1]`` by their own min and max. Returns ``z``, ``outlier`` mask, ``mid``, ``half``
    (``(…, 1)``), all float32."""
    vf = v.float()
    out = torch.zeros_like(vf, dtype=torch.bool)
    if n_out:
        out.scatter_(-1, vf.abs().topk(n_out, dim=-1).indices, True)
    lo = vf.masked_fill(out, float("inf")).amin(-1, keepdim=True)
    hi = vf.masked_fill(out, float("-inf")).amax(-1, keepdim=True)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    half = torch.where(half > 0, half, torch.ones_like(half))
    return (vf - mid) / half, out, mid, half


def fit_kvquant(kv: list[dict], bits: int, frac: float) -> dict[str, torch.Tensor]:
    """Per layer: per-channel key ranges ``k_lo``/``k_hi`` ``(L, H, D)`` — the ``frac/2`` and
    ``1 - frac/2`` quantiles of the pre-RoPE keys of each channel, so that a fraction ``frac`` of
    calibration entries falls outside — and the ``2**bits`` non-uniform levels on ``[-1, 1]`` of
    keys and values (``k_levels``, ``v_levels`` ``(L, 2**bits)``), k-means centroids of the
    normalised in-range calibration entries. The first calibration token (the attention sink,
    kept exact at run time) is left out."""
    k_lo, k_hi, k_lv, v_lv = [], [], [], []
    for layer in kv:
        kp = layer["k_pre"][:, :, 1:]  # (N, H, T-1, D)
        H, D = kp.shape[1], kp.shape[3]
        x = kp.permute(1, 3, 0, 2).reshape(H, D, -1)
        lo = torch.quantile(x, frac / 2, dim=-1) if frac else x.amin(-1)
        hi = torch.quantile(x, 1 - frac / 2, dim=-1) if frac else x.amax(-1)
        mid, half = (hi + lo) / 2, ((hi - lo) / 2).clamp(min=1e-8)
        z = (x - mid[..., None]) / half[..., None]
        k_lv.append(kmeans_1d(z[z.abs() <= 1], 2**bits))
        zv, out, _, _ = normalize_values(layer["v"][:, :, 1:], n_value_outliers(frac, D))
        v_lv.append(kmeans_1d(zv[~out], 2**bits))
        k_lo.append(lo)
        k_hi.append(hi)
    return {"k_lo": torch.stack(k_lo), "k_hi": torch.stack(k_hi),
            "k_levels": torch.stack(k_lv), "v_levels": torch.stack(v_lv)}


# -- the store --------------------------------------------------------------------------------


class KVQuantStore(MirroredStore):
    """Per-token encodings (so any subset of tokens can be kept), with a decoded mirror.

    Keys: RoPE is undone at the token's position; each channel is normalised by its calibrated
    range (``mid``, ``half``) and rounded to the nearest of ``k_levels``; entries outside the range
    are outliers, kept exact; the decoded key is rotated back. Values: per token, the ``n_out``
    largest-magnitude entries are outliers; the rest are normalised by their min/max and rounded
    to the nearest of ``v_levels``. Sink tokens are kept whole at full precision.

    The layer calls :meth:`set_context` (cos/sin of the new tokens' positions and their sink mask)
    before each ``append``.
    """

    def __init__(self, bits, k_lo, k_hi, k_levels, v_levels, frac):
        super().__init__()
        self.bits = bits
        self.k_mid = ((k_hi + k_lo) / 2).view(1, *k_lo.shape[:1], 1, -1)  # (1, H, 1, D)
        self.k_half = ((k_hi - k_lo) / 2).clamp(min=1e-8).view(1, *k_lo.shape[:1], 1, -1)
        self.k_levels, self.v_levels, self.frac = k_levels, v_levels, frac
        self.ctx = None

    def set_context(self, cos: torch.Tensor | None, sin: torch.Tensor | None, sink: torch.Tensor) -> None:
        """``cos``/``sin`` ``(B, 1, q, D)`` (None: no RoPE), ``sink`` ``(B, q)`` bool."""
        self.ctx = (cos, sin, sink)

    def _encode(self, k, v):
        cos, sin, sink = self.ctx
        B, H, q, D = k.shape
        dev = k.device
        mid, half = self.k_mid.to(dev), self.k_half.to(dev)
        kp = undo_rope(k.float(), cos, sin) if cos is not None else k.float()
        z = (kp - mid) / half
        k_out = z.abs() > 1
        k_codes = quantize_to_levels(z.clamp(-1, 1), self.k_levels)
        k_pre = torch.where(k_out, kp, dequantize_levels(k_codes, self.k_levels) * half + mid)
        k_hat = apply_rope(k_pre, cos, sin) if cos is not None else k_pre

        zv, v_out, v_mid, v_half = normalize_values(v, n_value_outliers(self.frac, D))
        v_codes = quantize_to_levels(zv.clamp(-1, 1), self.v_levels)
        v_hat = torch.where(v_out, v.float(), dequantize_levels(v_codes, self.v_levels) * v_half + v_mid)

        s = sink.view(B, 1, q, 1).to(dev)
        k_hat = torch.where(s, k.float(), k_hat).to(k.dtype)
        v_hat = torch.where(s, v.float(), v_hat).to(v.dtype)
        enc = {"k_codes": k_codes, "k_out": k_out, "v_codes": v_codes, "v_out": v_out,
               "v_mid": v_mid, "v_half": v_half, "sink": s.expand(B, H, q, 1)}
        return enc, k_hat, v_hat

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.ctx is None:
            raise RuntimeError("KVQuantStore.append needs set_context first (a KVQuantLayer does it)")
        enc, kd, vd = self._encode(k, v)
        self.ctx = None
        self._push(enc, kd, vd)

    def nbytes(self) -> int:
        """Non-sink entries: packed codes for K and V, a float32 (mid, half) per value vector, and
        every outlier as its value (model dtype) plus an int32 index. Sink entries: K and V at the
        model's dtype. Plus the layer's calibration: per-channel key ranges and both level sets
        (float32)."""
        if self.enc is None:
            return 0
        B, H, S, D = self.k_dec.shape
        item = self.k_dec.element_size()
        sink = self.enc["sink"][..., 0]
        n_sink = int(sink.sum())
        n_dense = B * H * S - n_sink
        live = ~sink.unsqueeze(-1)
        n_out = int((self.enc["k_out"] & live).sum() + (self.enc["v_out"] & live).sum())
        dense = n_dense * (2 * D * self.bits // 8 + 2 * 4)
        calib = 4 * (2 * self.k_mid.numel() + self.k_levels.numel() + self.v_levels.numel())
        return dense + n_out * (item + OUTLIER_INDEX_BYTES) + n_sink * 2 * D * item + calib


class KVQuantLayer(StoredLayer):
    """A :class:`StoredLayer` that tells its store the RoPE positions and sink tokens of each step
    (undoing RoPE needs positions, which the store contract does not carry)."""

    def __init__(self, step, make_store, sinks: int):
        super().__init__(step, make_store)
        self.sinks = sinks

    def store(self, k, v, slots, valid):
        q = k.shape[-2]
        positions = self.step.positions
        if positions is None:  # a bare begin_step(mask): positions count valid slots
            positions = (self.step.valid.long().cumsum(-1) - 1).clamp(min=0)
        pos = positions[:, self.seen - q: self.seen].to(k.device)  # (B, q); seen already counts them
        sink = valid[:, 0] & (pos < self.sinks)
        rotary = self.step.rotary
        cos, sin = rope_cos_sin(rotary, k, pos) if rotary is not None else (None, None)
        self.kv.set_context(cos, sin, sink)
        return super().store(k, v, slots, valid)


@dataclass(frozen=True)
class KVQuant(Scheme):
    """KVQuant-style cache (Hooper et al., arXiv 2401.18079), calibrated and deterministic.

    * Keys, per channel and pre-RoPE: RoPE is undone at each token's position; each channel has a
      calibrated range (the ``outliers/2`` % and ``100 - outliers/2`` % quantiles of that channel's
      pre-RoPE calibration keys), values inside it are normalised to ``[-1, 1]`` and rounded to
      the nearest of 2**B non-uniform levels; values outside are outliers kept exact
      (dense-and-sparse); the result is rotated back with RoPE.
    * Values, per token: the ``max(1, round(outliers% * head_dim))`` largest-magnitude entries of
      each vector are kept exact (KVQuant computes value thresholds online per token); the rest
      are normalised by their min/max and rounded to 2**B non-uniform levels.
    * The first ``sinks`` tokens (position < sinks; the attention sink) are kept whole at full
      precision (KVQuant's attention-sink-aware quantization).
    * Levels: per layer, one set for keys and one for values, fitted by 1-D k-means on the
      normalised in-range calibration entries (:func:`fit_kvquant`, cached per model).

    Deviations: the levels come from unweighted k-means — KVQuant weights it by Fisher
    information, which needs gradients we do not compute — and there is no Q-Norm centroid
    correction; per-token value scales (mid, half) and the calibration are float32; outliers are
    counted as value + int32 index. Role ``standalone``: the store must know every token's RoPE
    position, which the hybrid store contract (``make_store()``, ``append(k, v)``) does not pass.
    Prefill attends exactly (``StoredLayer``'s rule).
    """

    bits: int = 3
    outliers: float = 1.0  # percent of entries kept exact
    sinks: int = 1

    family = "kvquant"
    grammar = "kvquant-B[-oP][-sN]  (B in 2..8, 16 = model precision; P % outliers, default 1; N sinks, default 1)"
    pattern = r"kvquant-(?P<bits>\d+)(?:-o(?P<outliers>\d+(?:\.\d+)?))?(?:-s(?P<sinks>\d+))?"
    summary = "KVQuant: pre-RoPE per-channel keys, non-uniform levels, ~1% outliers and the sink kept exact"
    role = "standalone"

    def __post_init__(self):
        check_bits(self.bits)
        if not 0.0 <= self.outliers < 100.0:
            raise ValueError(f"outlier percentage must be in [0, 100), not {self.outliers}")
        if self.sinks < 0:
            raise ValueError("sinks must be at least 0")

    @property
    def name(self) -> str:
        o = "" if self.outliers == 1.0 else f"-o{self.outliers:g}"
        s = "" if self.sinks == 1 else f"-s{self.sinks}"
        return f"kvquant-{self.bits}{o}{s}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("channel", "token"), strategy="static",
            compensation=("outliers", "sinks_kept", "nonlinear", "calibration"), phase="decode",
            params={"bits": self.bits, "outlier_fraction": self.outliers / 100, "sinks": self.sinks},
        )

    def prepare(self, model):
        if self.bits == NOOP_BITS:
            return None
        frac = self.outliers / 100
        key = f"kvquant-{self.bits}-o{self.outliers:g}"
        return cached_fit(model, key, lambda kv: fit_kvquant(kv, self.bits, frac))

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        if self.bits == NOOP_BITS:
            return StoredLayer(step)
        if prep is None:
            raise ValueError(f"{self.name} needs its calibration (prepare(model))")
        store = partial(KVQuantStore, self.bits, prep["k_lo"][layer_idx], prep["k_hi"][layer_idx],
                        prep["k_levels"][layer_idx], prep["v_levels"][layer_idx], self.outliers / 100)
        return KVQuantLayer(step, store, self.sinks)

    @classmethod
    def from_match(cls, groups):
        return cls(bits=int(groups["bits"]), outliers=float(groups["outliers"] or 1.0),
                   sinks=int(groups["sinks"]) if groups["sinks"] is not None else 1)
