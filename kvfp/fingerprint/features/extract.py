"""One fixed-length, NaN-free feature vector per observation and tier.

A tier's vector is the concatenation of the families that tier can feed (and nothing else: the
observation is restricted to the tier first, so a feature can never read what an endpoint of that
tier does not return):

=========  =====================================================================
tier       families
=========  =====================================================================
logits     logits, tokens, candidate distances (logits)
topk-k     topk (k), tokens, candidate distances (topk-k)
prompt     prompt, tokens, candidate distances (prompt and tokens)
tokens     tokens, candidate distances (tokens)
=========  =====================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from kvfp.compressors import canonical_names
from kvfp.errors import KvfpError
from kvfp.fingerprint.features import candidates as C
from kvfp.fingerprint.features import logits as L
from kvfp.fingerprint.features import prompt as PR
from kvfp.fingerprint.features import tokens as TK
from kvfp.fingerprint.features import topk as TOPK
from kvfp.fingerprint.observation import TIERS, Observation

# Bump when any feature's definition changes: a saved classifier records it and refuses other versions.
FEATURES_VERSION = 2


def _check_tier(tier: str) -> None:
    if tier not in TIERS:
        raise KvfpError(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}", exit_code=2)


def feature_names(tier: str, candidates: Sequence[str] | None = None) -> list[str]:
    """Names of the entries of :func:`features` at ``tier`` for a candidate list (default: the
    canonical catalogue, as :class:`~kvfp.fingerprint.reference.ReferenceRunner` uses)."""
    _check_tier(tier)
    cands = list(canonical_names() if candidates is None else candidates)
    if tier == "logits":
        return L.names() + TK.names() + C.names("logits", cands)
    if tier.startswith("topk-"):
        return TOPK.names(tier) + TK.names() + C.names(tier, cands)
    if tier == "prompt":
        return PR.names() + TK.names() + C.names("prompt", cands) + C.names("tokens", cands)
    return TK.names() + C.names("tokens", cands)


def features(obs: Observation, ref, tier: str, probe=None) -> np.ndarray:
    """The feature vector of one observation at one tier.

    Parameters
    ----------
    obs : the observation (restricted to ``tier`` here; a richer one gives the same vector)
    ref : its :class:`~kvfp.fingerprint.reference.Reference` (replays of the same ids)
    tier : one of :data:`kvfp.fingerprint.observation.TIERS`
    probe : the :class:`~kvfp.probes.probe.Probe` it answers, for span-distance profiles; ``None``
        puts every position in the "no span" bucket

    Returns
    -------
    ``(len(feature_names(tier, list(ref.candidates))),)`` float64, finite
    """
    _check_tier(tier)
    try:
        o = obs.restrict(tier)
    except ValueError as e:
        raise KvfpError(f"observation {obs.probe_id or '(no probe id)'}: {e}") from None
    if list(o.prompt_ids) != list(ref.prompt_ids) or list(o.output_ids) != list(ref.output_ids):
        raise KvfpError(f"observation {obs.probe_id or '(no probe id)'}: its reference replays other tokens")
    if probe is not None and probe.n_tokens != len(o.prompt_ids):
        raise KvfpError(f"observation {obs.probe_id or '(no probe id)'} has {len(o.prompt_ids)} prompt tokens but "
                        f"probe {probe.id} has {probe.n_tokens}: its spans would point at the wrong tokens")
    noise = ref.noise_observation()
    if noise is not None and not (tier == "prompt" and noise.prompt_logprobs is None):
        noise = noise.restrict(tier)
    else:
        noise = None
    if tier == "logits":
        parts = [L.compute(o, ref, noise, probe), TK.compute(o, ref), C.compute(o, ref, noise, "logits")]
    elif tier.startswith("topk-"):
        parts = [TOPK.compute(o, ref, noise, tier, probe), TK.compute(o, ref), C.compute(o, ref, noise, tier)]
    elif tier == "prompt":
        parts = [PR.compute(o, ref, noise, probe), TK.compute(o, ref), C.compute(o, ref, noise, "prompt"),
                 C.compute(o, ref, noise, "tokens")]
    else:
        parts = [TK.compute(o, ref), C.compute(o, ref, noise, "tokens")]
    values = {k: v for p in parts for k, v in p.items()}
    names = feature_names(tier, list(ref.candidates))
    if list(values) != names:  # a family and its names() disagree: a bug, not a user error
        raise RuntimeError(f"feature families produced {len(values)} values for {len(names)} names at {tier}")
    x = np.array([values[n] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(x)):
        bad = [n for n, v in zip(names, x) if not np.isfinite(v)]
        # finite inputs whose size no model produces (logits near float32's limit) end here
        raise KvfpError(f"the responses give non-finite features at tier {tier} ({', '.join(bad[:5])}): the log holds "
                        f"numbers out of any model's range")
    return x


def feature_matrix(observations: Iterable[Observation], runner, tiers: Sequence[str],
                   probes: dict | None = None) -> dict[str, np.ndarray]:
    """Features of many observations at several tiers, replaying each observation once.

    Parameters
    ----------
    observations : the observations (each must support every tier asked for)
    runner : a :class:`~kvfp.fingerprint.reference.ReferenceRunner`
    tiers : tiers to compute
    probes : ``{probe_id: Probe}`` for span profiles (observations without a match get none)

    Returns
    -------
    ``{tier: (n_observations, n_features) float64}``
    """
    for t in tiers:
        _check_tier(t)
    obs = list(observations)
    rows: dict[str, list[np.ndarray]] = {t: [] for t in tiers}
    for o, ref in zip(obs, runner.references(obs)):
        probe = (probes or {}).get(o.probe_id)
        for t in tiers:
            rows[t].append(features(o, ref, t, probe))
    cands = runner.candidates
    return {t: (np.stack(rows[t]) if rows[t] else np.zeros((0, len(feature_names(t, cands))))) for t in tiers}
