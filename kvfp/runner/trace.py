"""The trace: what a run (or an endpoint) produced for one prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRACE_FORMAT = 1


@dataclass
class Trace:
    """One prompt's outputs, step by step.

    Attributes
    ----------
    prompt_ids : the prompt's token ids (BOS included when the tokenizer adds one)
    output_ids : generated (``mode="generate"``) or teacher-forced (``mode="replay"``) ids
    token_logprobs : log-probability of ``output_ids[t]`` at step ``t``
    topk_ids, topk_logprobs : per step, the ``k`` most likely ids and their log-probabilities
    logits : optional ``(steps, vocab)`` float32 raw logits
    prompt_logprobs : optional, per prompt position the logprob of the prompt token there as the
        prefill scored it (position 0 is ``None``): what vLLM's ``prompt_logprobs`` returns
    meta : scheme, gene, model, probe id and nuisance settings (dtype, attention, batch size,
        padding); later stages add fields here rather than changing the ones above
    """

    prompt_ids: list[int]
    output_ids: list[int]
    token_logprobs: list[float]
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    mode: str = "generate"
    logits: np.ndarray | None = None
    prompt_logprobs: list[float | None] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.output_ids)

    def to_record(self) -> dict:
        """JSON-ready dict without the full logits (those go to a binary sidecar)."""
        return {
            "format": TRACE_FORMAT,
            "mode": self.mode,
            **self.meta,
            "prompt_ids": self.prompt_ids,
            "output_ids": self.output_ids,
            "token_logprobs": self.token_logprobs,
            "topk_ids": self.topk_ids,
            "topk_logprobs": self.topk_logprobs,
            **({"prompt_logprobs": self.prompt_logprobs} if self.prompt_logprobs is not None else {}),
        }

    @classmethod
    def from_record(cls, rec: dict, logits: np.ndarray | None = None) -> Trace:
        core = {"format", "mode", "prompt_ids", "output_ids", "token_logprobs", "topk_ids", "topk_logprobs",
                "prompt_logprobs"}
        return cls(
            prompt_ids=list(rec["prompt_ids"]),
            output_ids=list(rec["output_ids"]),
            token_logprobs=list(rec["token_logprobs"]),
            topk_ids=[list(r) for r in rec["topk_ids"]],
            topk_logprobs=[list(r) for r in rec["topk_logprobs"]],
            mode=rec.get("mode", "generate"),
            logits=logits,
            prompt_logprobs=rec.get("prompt_logprobs"),
            meta={k: v for k, v in rec.items() if k not in core},
        )
