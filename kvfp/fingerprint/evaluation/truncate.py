"""Observations and their replays cut to their first ``t`` generated steps.

Generation and replay are causal (teacher forcing feeds the observed tokens one at a time, and a
cache compressed at step ``i`` depends on steps ``≤ i`` only), so the first ``t`` rows of a replay
are exactly the replay of the first ``t`` tokens: a shorter response costs no new replay. Prompt
log-probabilities are scored at prefill and do not change.
"""

from __future__ import annotations

from dataclasses import replace

from kvfp.fingerprint.observation import Observation
from kvfp.fingerprint.reference import Reference, Replay


def _rows(x, t: int):
    return None if x is None else x[:t]


def truncate_observation(obs: Observation, t: int) -> Observation:
    """``obs`` as if the endpoint had generated only its first ``t`` tokens (``t ≥ 1``)."""
    if t < 1:
        raise ValueError(f"t must be at least 1, got {t}")
    return replace(obs, output_ids=list(obs.output_ids[:t]), token_logprobs=_rows(obs.token_logprobs, t),
                   topk_ids=_rows(obs.topk_ids, t), topk_logprobs=_rows(obs.topk_logprobs, t),
                   logits=_rows(obs.logits, t), notes=list(obs.notes), meta=dict(obs.meta))


def _cut(rep: Replay | None, t: int) -> Replay | None:
    return None if rep is None else Replay(logits=rep.logits[:t], prompt_logprobs=rep.prompt_logprobs)


def truncate_reference(ref: Reference, t: int) -> Reference:
    """The :class:`Reference` of ``truncate_observation(obs, t)`` from the one of ``obs``."""
    if t < 1:
        raise ValueError(f"t must be at least 1, got {t}")
    return Reference(prompt_ids=list(ref.prompt_ids), output_ids=list(ref.output_ids[:t]), ref=_cut(ref.ref, t),
                     noise=_cut(ref.noise, t), candidates={n: _cut(r, t) for n, r in ref.candidates.items()})
