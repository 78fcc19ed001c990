"""What an endpoint returned for one probe, at whatever access tier it allows.

Readers (endpoint logs) and the dataset store (collected traces) both produce observations, so
features are computed one way for both. ``restrict(tier)`` drops everything an endpoint of that
tier would not return: a classifier trained on restricted observations cannot key on data it
will not see in the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# From most to least informative; an observation supports a tier when it holds what the tier needs.
TIERS = ("logits", "topk-20", "topk-5", "prompt", "tokens")


def topk_of(tier: str) -> int | None:
    """``"topk-20"`` → 20; ``None`` for tiers without top-k lists."""
    return int(tier.split("-", 1)[1]) if tier.startswith("topk-") else None


@dataclass
class Observation:
    """One probe's response.

    Attributes
    ----------
    prompt_ids : the prompt as the model saw it (BOS included where the tokenizer adds one)
    output_ids : generated ids
    token_logprobs : per step, the chosen token's logprob (``None``: not returned)
    topk_ids, topk_logprobs : per step, the returned top-k, most likely first (``None``: not returned)
    logits : ``(steps, vocab)`` float32 raw logits (``None``: not returned)
    prompt_logprobs : per prompt position, the logprob of the prompt token there (position 0 is
        ``None``: nothing predicts the first token); ``None`` when not returned
    probe_id : the kvfp probe this answers, where known
    source : the log format it was read from (``"kvfp-jsonl"``, ``"openai-completions"``, …)
    notes : what the reader could not map with certainty (ambiguous token strings…)
    meta : anything else known (scheme of a collected trace, nuisance settings…)
    """

    prompt_ids: list[int]
    output_ids: list[int]
    token_logprobs: list[float] | None = None
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    logits: np.ndarray | None = None
    prompt_logprobs: list[float | None] | None = None
    probe_id: str | None = None
    source: str = "kvfp"
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.output_ids)

    def topk_depth(self) -> int:
        """The ``k`` the top-k lists stand for (0 without them).

        The shortest row, unless the reader marked the lists ``meta["topk_partial"]``: the server
        was asked for ``meta["topk_k"]`` entries and returned fewer at some steps only because it
        merged ids whose strings collide, which the reader dropped. Such rows are partial evidence
        of a top-``topk_k`` list (see :mod:`kvfp.fingerprint.features.topk`), not a shorter list.
        """
        if self.topk_ids is None:
            return 0
        if self.meta.get("topk_partial"):
            return int(self.meta.get("topk_k", max((len(r) for r in self.topk_ids), default=0)))
        return min((len(r) for r in self.topk_ids), default=0)

    def tiers(self) -> list[str]:
        """Tiers this observation supports, most informative first."""
        out = []
        if self.logits is not None:
            out.append("logits")
        k = self.topk_depth()
        if self.logits is not None or k >= 20:
            out.append("topk-20")
        if self.logits is not None or k >= 5:
            out.append("topk-5")
        if self.prompt_logprobs is not None:
            out.append("prompt")
        out.append("tokens")
        return out

    def restrict(self, tier: str) -> Observation:
        """A copy holding only what an endpoint of ``tier`` returns.

        Top-k tiers keep the ``k`` best entries (derived from the logits when the observation
        has them; of partial lists, those certainly among the ``k`` best) and the chosen token's
        logprob; ``prompt`` keeps prompt logprobs and tokens; ``tokens`` keeps ids only.
        """
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}")
        if tier not in self.tiers():
            raise ValueError(f"this observation does not support tier {tier!r} (it supports {self.tiers()})")
        bare = replace(self, token_logprobs=None, topk_ids=None, topk_logprobs=None, logits=None,
                       prompt_logprobs=None, notes=list(self.notes), meta=dict(self.meta))
        if tier == "logits":
            return replace(bare, logits=self.logits, token_logprobs=self.token_logprobs,
                           topk_ids=self.topk_ids, topk_logprobs=self.topk_logprobs)
        if tier == "prompt":
            return replace(bare, prompt_logprobs=self.prompt_logprobs)
        if tier == "tokens":
            return bare
        k = topk_of(tier)
        if self.logits is not None and (self.topk_ids is None or min(map(len, self.topk_ids)) < k):
            ids, lps = _topk_from_logits(self.logits, k)
            chosen = _logsoftmax(self.logits)[np.arange(self.steps), self.output_ids].tolist()
            if bare.meta.get("topk_partial"):  # the lists now come whole from the logits
                bare.meta["topk_k"] = k
            return replace(bare, topk_ids=ids, topk_logprobs=lps, token_logprobs=chosen)
        cut = self._topk_cut(k)
        if bare.meta.get("topk_partial"):  # the lists cut to k stand for a top-k, no longer
            bare.meta["topk_k"] = min(self.topk_depth(), k)
        return replace(bare, token_logprobs=self.token_logprobs,
                       topk_ids=[r[:n] for r, n in zip(self.topk_ids, cut)],
                       topk_logprobs=[r[:n] for r, n in zip(self.topk_logprobs, cut)])

    def _topk_cut(self, k: int) -> list[int]:
        """How many entries of each row a top-``k`` endpoint would have returned for certain.

        ``k`` for full lists. In a partial row each missing entry could have ranked anywhere above
        the ones after it, so the entry at position ``j`` of a row missing ``g`` ranks has rank
        ``j`` to ``j + g``: only the first ``k - g`` are certainly in the top-``k`` (the first
        always, rows being most likely first). Keeping ``r[:k]`` instead would hand a top-``k``
        tier entries of rank ``k`` or more, which such an endpoint never returns and which the
        reference's own top-``k`` would count as misses.
        """
        if not self.meta.get("topk_partial"):
            return [k] * len(self.topk_ids)
        depth = self.topk_depth()
        return [min(k, max(1, k - max(depth - len(r), 0))) for r in self.topk_ids]


def _logsoftmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _topk_from_logits(logits: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    lp = _logsoftmax(logits)
    # stable sort on the negated values: ties go to the lower id, as torch.topk does on CPU
    order = np.argsort(-lp, axis=-1, kind="stable")[:, :k]
    return order.tolist(), np.take_along_axis(lp, order, -1).tolist()


def from_trace(trace) -> Observation:
    """An observation from a collected :class:`kvfp.runner.trace.Trace` (every tier it holds)."""
    meta = dict(trace.meta)
    probe = meta.get("probe") or {}
    return Observation(prompt_ids=list(trace.prompt_ids), output_ids=list(trace.output_ids),
                       token_logprobs=list(trace.token_logprobs), topk_ids=[list(r) for r in trace.topk_ids],
                       topk_logprobs=[list(r) for r in trace.topk_logprobs], logits=trace.logits,
                       prompt_logprobs=trace.prompt_logprobs, probe_id=probe.get("id"),
                       source="kvfp", meta=meta)
