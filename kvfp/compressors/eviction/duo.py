"""``duo-F``: retrieval heads keep everything, streaming heads keep sinks + a window
(DuoAttention, arXiv 2410.10819)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kvfp.compressors.eviction.base import NUM, check_fraction, fmt
from kvfp.compressors.eviction.streaming import SinkWindowLayer
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.stored import StoredLayer

SINKS, WINDOW = 4, 252


def outside_mass(probs: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """Attention mass a streaming head would lose, per query head: ``(B, H, q, S)`` probabilities
    of a forward over a whole sequence (query ``i`` at key index ``S - q + i``) → ``(B, H)``,
    the mean over the queries that can lose any (those past ``sinks + window``) of the mass on
    keys that are neither sinks nor within the query's ``window``."""
    B, H, q, S = probs.shape
    qi = torch.arange(S - q, S, device=probs.device)[:, None]  # (q, 1)
    kj = torch.arange(S, device=probs.device)[None, :]  # (1, S)
    lost = (kj >= sinks) & (kj <= qi - window)  # (q, S)
    per_query = (probs.float() * lost).sum(-1)  # (B, H, q)
    far = (qi[:, 0] >= sinks + window).float()
    return (per_query * far).sum(-1) / far.sum().clamp(min=1)


def retrieval_heads(mass: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ``round(fraction · n)`` KV heads of ``mass`` ``(layers, Hkv)`` that would lose the
    most attention as streaming heads, across all layers (ties: lower layer, then head, first)."""
    n = int(fraction * mass.numel() + 0.5)
    order = torch.sort(mass.flatten(), descending=True, stable=True).indices
    flags = torch.zeros(mass.numel(), dtype=torch.bool)
    flags[order[:n]] = True
    return flags.view(mass.shape)


class _MassLayer(StoredLayer):
    """Calibration only: full attention that records each KV head's :func:`outside_mass`."""

    wants_scores = True

    def __init__(self, step, totals: list, layer_idx: int, sinks: int, window: int):
        super().__init__(step)
        self.totals, self.layer_idx, self.sinks, self.window = totals, layer_idx, sinks, window

    def observe(self, probs):
        n_kv = self.kv.keys().shape[1]
        mass = outside_mass(probs, self.sinks, self.window).mean(0)  # (H,)
        self.totals[self.layer_idx] += mass.view(n_kv, -1).mean(-1).cpu()  # query heads → KV head


@dataclass(frozen=True)
class _MassRecorder(Scheme):
    sinks: int
    window: int
    totals: list = field(default_factory=list, compare=False)

    name = "duo-calibration"

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return _MassLayer(step, self.totals, layer_idx, self.sinks, self.window)


@torch.inference_mode()
def calibrate_mass(model, sinks: int, window: int) -> torch.Tensor:
    """``(layers, Hkv)``: mean :func:`outside_mass` of each KV head over the calibration windows
    (the same BOS-prefixed windows of held-out calibration text as ``capture_kv``)."""
    from kvfp.compressors.calibration import calibration_windows
    from kvfp.runner.attach import attach

    rows = calibration_windows(model)
    cfg = model.config
    recorder = _MassRecorder(sinks, window)
    recorder.totals.extend(torch.zeros(cfg.num_key_value_heads) for _ in range(cfg.num_hidden_layers))
    with attach(model, recorder) as attached:
        for row in rows:
            x = torch.tensor([row], device=model.device)
            mask = torch.ones_like(x)
            positions = torch.arange(x.shape[1], device=model.device)[None]
            cache = attached.new_cache()
            cache.begin_step(mask, positions)
            model(input_ids=x, attention_mask=mask, position_ids=positions, cache=cache,
                  kvfp_cache=cache, use_cache=True, logits_to_keep=1)
    return torch.stack(recorder.totals) / len(rows)


@dataclass(frozen=True)
class DuoAttention(Scheme):
    """DuoAttention-style head split (Xiao et al., arXiv 2410.10819).

    A fraction ``F`` of all KV heads (counted over every layer, rounded) are *retrieval* heads
    that keep and attend to every entry; the others are *streaming* heads that keep only the
    first ``sinks`` real tokens and the last ``window`` (StreamingLLM's pattern, applied during
    prefill as a per-head band and enforced after every forward). Budget per streaming head:
    absolute, ``sinks + window`` entries; retrieval heads grow with the sequence. Gene phase
    ``both``.

    Which heads retrieve is calibrated once per model (deterministic, cached by ``cached_fit``):
    each KV head is scored by the attention mass its query heads put outside sinks + window on
    the held-out calibration text (:func:`outside_mass`), and the ``F`` highest keep everything.
    Deviation: DuoAttention learns per-head gates by distillation on synthetic passkey data; the
    mass lost to the streaming pattern is the quantity those gates trade off, measured directly.
    Evicted entries of a streaming head are excluded from attention and from ``nbytes``.
    """

    retrieval: float = 0.5
    sinks: int = SINKS
    window: int = WINDOW

    family = "duo"
    grammar = "duo-F[-sS-wW]  (F in [0, 1]: fraction of retrieval heads; streaming heads keep S sinks + W recent)"
    pattern = rf"duo-(?P<retrieval>{NUM})(?:-s(?P<sinks>\d+)-w(?P<window>\d+))?"
    summary = "some heads keep everything, others only sinks + window"
    role = "eviction"

    def __post_init__(self):
        check_fraction("retrieval fraction", self.retrieval, allow_zero=True)
        if self.sinks < 0:
            raise ValueError("sinks must be ≥ 0")
        if self.window < 1:
            raise ValueError("window must be at least 1")

    @property
    def name(self) -> str:
        tail = "" if (self.sinks, self.window) == (SINKS, WINDOW) else f"-s{self.sinks}-w{self.window}"
        return f"duo-{fmt(self.retrieval)}{tail}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("head", "token"), strategy="static", importance="position",
            compensation=("sinks_kept", "calibration"), phase="both",
            params={"retrieval": self.retrieval, "sinks": self.sinks, "window": self.window},
        )

    def prepare(self, model):
        from kvfp.compressors.calibration import cached_fit

        shape = (model.config.num_hidden_layers, model.config.num_key_value_heads)
        if self.retrieval in (0, 1):  # no ranking needed
            return {"retrieval": torch.full(shape, bool(self.retrieval))}
        name = f"duo-mass-s{self.sinks}-w{self.window}"  # F only moves the cut: one fit serves all
        fit = cached_fit(model, name, lambda _kv: {"mass": calibrate_mass(model, self.sinks, self.window)})
        return {"retrieval": retrieval_heads(fit["mass"], self.retrieval)}

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        if prep is None:
            raise ValueError(f"{self.name} needs its calibration: attach it with kvfp.runner.attach")
        streaming = ~prep["retrieval"][layer_idx]
        return SinkWindowLayer(step, self.sinks, self.window, streaming=streaming, make_store=make_store)

    @classmethod
    def from_match(cls, groups):
        if groups["sinks"] is None:
            return cls(retrieval=float(groups["retrieval"]))
        return cls(retrieval=float(groups["retrieval"]), sinks=int(groups["sinks"]), window=int(groups["window"]))
