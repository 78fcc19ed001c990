"""A scheme's gene: the design choices that leave a systematic mark on the logits (SCHEMES.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ALGORITHMS = ("none", "quantization", "eviction", "low_rank", "latent", "merging", "hybrid")
GRANULARITIES = ("tensor", "layer", "head", "token", "channel", "group", "block")
STRATEGIES = ("static", "dynamic")
IMPORTANCES = (
    "recency", "position", "attention_cumulative", "attention_window", "attention_last",
    "key_norm", "value_aware", "query_aware_block", "none",
)
COMPENSATIONS = (
    "zero_point", "residual_window", "outliers", "sinks_kept", "clip_mse", "clip_quantile",
    "nonlinear", "mixed_precision", "calibration",
)
PHASES = ("prefill", "decode", "both")


@dataclass(frozen=True)
class Gene:
    algorithm: str
    granularity: tuple[str, ...] = ()
    strategy: str = "static"
    importance: str = "none"
    compensation: tuple[str, ...] = ()
    phase: str = "both"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        def check(value, allowed, what):
            if value not in allowed:
                raise ValueError(f"gene {what} {value!r} is not one of {allowed}")

        check(self.algorithm, ALGORITHMS, "algorithm")
        for g in self.granularity:
            check(g, GRANULARITIES, "granularity")
        check(self.strategy, STRATEGIES, "strategy")
        check(self.importance, IMPORTANCES, "importance")
        for c in self.compensation:
            check(c, COMPENSATIONS, "compensation")
        check(self.phase, PHASES, "phase")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["granularity"] = list(self.granularity)
        d["compensation"] = list(self.compensation)
        return d
