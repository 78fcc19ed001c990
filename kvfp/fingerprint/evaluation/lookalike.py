"""Schemes that are indistinguishable on one observation: their replays of its tokens are equal.

On a given model and probe some schemes do exactly the same thing: a window longer than the
prompt evicts nothing, ``int4-group32`` is ``int4-pertoken-zp`` when the head dimension is 32.
Their outputs are then identical, so no classifier, however good, can tell them apart on that
probe, and strict scheme accuracy counts a coin flip between them as half wrong. ``kvfp evaluate``
therefore reports, beside strict accuracy, the accuracy that counts a prediction right when the
predicted scheme's replay of the observation's tokens equals the true scheme's (both replayed
by kvfp at the reference settings). It is known only for schemes that are candidates (by default
every evaluated scheme is); a scheme that is not one is only its own look-alike.
"""

from __future__ import annotations

import numpy as np

ATOL = 1e-5  # float32 logits of different code paths doing the same arithmetic agree to ~1e-6


def same_replay(a, b) -> bool:
    """Two :class:`~kvfp.fingerprint.reference.Replay` of the same tokens give the same outputs."""
    if a.logits.shape != b.logits.shape or not np.allclose(a.logits, b.logits, rtol=0.0, atol=ATOL):
        return False
    pa, pb = a.prompt_logprobs, b.prompt_logprobs
    if pa is None or pb is None:
        return pa is None and pb is None
    return bool(np.allclose(pa, pb, rtol=0.0, atol=ATOL, equal_nan=True))


def lookalikes(observations, labels, runner) -> list[set[str]]:
    """Per observation, the candidate schemes whose replay equals its true scheme's (the true
    scheme included; only itself when it is not a candidate)."""
    out = []
    for y, ref in zip(labels, runner.references(observations)):
        y = str(y)
        if y not in ref.candidates:
            out.append({y})
            continue
        mine = ref.candidates[y]
        out.append({c for c, rep in ref.candidates.items() if c == y or same_replay(mine, rep)})
    return out


def accuracy(pred, alike: list[set[str]]) -> float:
    """Fraction of predictions that fall among their observation's look-alikes."""
    return float(np.mean([str(p) in s for p, s in zip(pred, alike)])) if len(alike) else float("nan")
