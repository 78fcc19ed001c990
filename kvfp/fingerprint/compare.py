"""Compare an observed trace with a reference trace of the same prompt.

Top-k log-probabilities are logits minus one constant per step, so on the ids both traces list
the differences are exact logit differences up to that constant; we remove it by centring on the
shared support before comparing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvfp.runner.trace import Trace


@dataclass
class TraceComparison:
    steps: int  # steps compared: up to and including the first token that differs
    token_agreement: float  # fraction of all steps whose token matches the reference
    first_divergence: int | None  # first step whose token differs, None if none does
    mean_abs_logit_diff: float  # on the shared top-k support, per-step constant removed
    max_abs_logit_diff: float


def compare_traces(ref: Trace, obs: Trace) -> TraceComparison:
    if ref.prompt_ids != obs.prompt_ids:
        raise ValueError("traces of different prompts cannot be compared")
    n = min(ref.steps, obs.steps)
    same = [a == b for a, b in zip(ref.output_ids[:n], obs.output_ids[:n])]
    first = next((i for i, s in enumerate(same) if not s), None)
    # after the first differing token the two runs condition on different text
    upto = n if first is None else first + 1
    diffs = []
    for t in range(upto):
        r = dict(zip(ref.topk_ids[t], ref.topk_logprobs[t]))
        o = dict(zip(obs.topk_ids[t], obs.topk_logprobs[t]))
        shared = [i for i in r if i in o]
        if not shared:
            continue
        d = np.array([o[i] - r[i] for i in shared])
        diffs.append(d - d.mean())
    flat = np.concatenate(diffs) if diffs else np.zeros(1)
    return TraceComparison(
        steps=upto,
        token_agreement=float(np.mean(same)) if same else 1.0,
        first_divergence=first,
        mean_abs_logit_diff=float(np.abs(flat).mean()),
        max_abs_logit_diff=float(np.abs(flat).max()),
    )
