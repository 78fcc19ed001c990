"""``topk-k`` tiers: the returned top-k logprobs against the reference, on their shared support.

Top-k logprobs are the logits minus one constant per step (the log-normaliser), so within a step
their differences are exact logit differences. Every quantity here is computed from values centred
on the returned ids (or renormalised over them), which makes the features exactly invariant to
adding any constant per step: nothing depends on the endpoint's normaliser, which a top-k API
cannot report faithfully anyway.

Per step, on the returned ids ``S``: the centred difference (its RMS and largest entry), KL both
ways and JS of the two distributions renormalised on ``S``, Spearman and Kendall agreement of the
returned order with the reference's order of the same ids, a top-1 flip, the reference mass the
returned ids miss compared with the reference's own top-k, and the overlap with the reference's top-k.

Partial rows. A server that keys its top-k by token string (llama.cpp's OpenAI server, OpenAI-style
``/v1/completions``) merges ids whose strings collide; the readers drop such entries rather than
guess, and mark the observation ``meta["topk_partial"]``. Its rows then hold between 1 and ``k``
exact entries: ``S`` is whatever was returned at that step, and every quantity above is computed on
it as it stands (the centring, the renormalisation and the rank agreements over the entries
present; the misses against the reference's top-k count the entries the server could not name in
the reference's favour, see :func:`_misses`). :class:`Support` keeps the rectangular ``(steps, k)``
layout with a mask, and :func:`by_length` runs the vectorised code once per row length, so a full
observation goes through exactly the computation it always did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kvfp.fingerprint.features import profiles as P
from kvfp.fingerprint.features.common import EPS, centred, js, kendall, kl, logsoftmax, rel, safe_mean, spearman
from kvfp.fingerprint.observation import topk_of

_REL = (("drms", "logit"), ("dmax", "logit"), ("kl_or", "kl"), ("kl_ro", "kl"), ("js", "js"))
_RAW = ("spear", "kendall", "flip", "missmass", "miss")


@dataclass(frozen=True)
class Support:
    """The returned top-k of an observation as rectangular arrays.

    Attributes
    ----------
    ids : ``(steps, k)`` int64 returned ids, most likely first; a short row is padded after its
        entries by repeating its first id (a valid index that no result reads)
    lps : ``(steps, k)`` float64 their logprobs, padded the same way
    mask : ``(steps, k)`` bool, ``True`` on returned entries; each row is ``True`` on a prefix of
        at least one entry
    """

    ids: np.ndarray
    lps: np.ndarray
    mask: np.ndarray

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def steps(self) -> int:
        return self.ids.shape[0]

    @property
    def full(self) -> bool:
        return bool(self.mask.all())

    def on(self, lr: np.ndarray) -> np.ndarray:
        """A run's log-probs ``(steps, vocab)`` on the returned ids: ``(steps, k)``."""
        return np.take_along_axis(lr, self.ids, -1)

    def groups(self) -> list[tuple[slice | np.ndarray, int]]:
        """``(rows, n)`` per distinct row length ``n``: the steps that returned exactly ``n`` entries
        (``slice(None)`` when that is every step, so a full observation is computed on the arrays
        themselves rather than on a copy)."""
        if self.full:
            return [(slice(None), self.k)]
        lengths = self.mask.sum(-1)
        return [(np.flatnonzero(lengths == n), int(n)) for n in np.unique(lengths)]


def support(obs, k: int) -> Support:
    """The first ``k`` returned ids and logprobs of every step (see :class:`Support`).

    Rows shorter than ``k`` are accepted only from an observation its reader marked
    ``meta["topk_partial"]`` and asked with at least ``k`` (``meta["topk_k"]``); anything else
    short is a malformed log, refused as before.
    """
    rows_i = [list(r[:k]) for r in obs.topk_ids]
    rows_l = [list(r[:k]) for r in obs.topk_logprobs]
    lengths = np.array([len(r) for r in rows_i], dtype=np.int64)
    partial = bool(obs.meta.get("topk_partial")) and obs.topk_depth() >= k
    ok = (len(rows_i) == obs.steps and len(rows_l) == obs.steps
          and all(len(a) == len(b) for a, b in zip(rows_i, rows_l)))
    ok = ok and (bool(np.all(lengths == k)) or (partial and bool(np.all(lengths >= 1))))
    if not ok:
        raise ValueError(f"observation does not hold {k} top-k entries at each of its {obs.steps} steps")
    mask = np.arange(k)[None, :] < lengths[:, None]
    if mask.all():  # exactly the arrays a full observation always gave
        return Support(np.array(rows_i, dtype=np.int64).reshape(obs.steps, k),
                       np.array(rows_l, dtype=np.float64).reshape(obs.steps, k), mask)
    ids = np.array([r + [r[0]] * (k - len(r)) for r in rows_i], dtype=np.int64)
    lps = np.array([r + [r[0]] * (k - len(r)) for r in rows_l], dtype=np.float64)
    return Support(ids, lps, mask)


def by_length(sup: Support, fn: Callable, *xs: np.ndarray, per_entry: bool = False):
    """``fn`` applied to the steps of each row length at once, on their returned entries only
    (each ``x`` of ``xs`` is ``(steps, k)``, ``fn`` sees ``(n_steps, n)``), put back in step order.

    ``fn`` returns one ``(n_steps,)`` array, or a dict of them: the result is ``(steps,)`` (or a
    dict of such). With ``per_entry`` it returns ``(n_steps, n)`` and the result is ``(steps, k)``
    with zeros on the padding, so sums and dot products over it see the returned entries only.
    """
    outs: dict = {}
    for rows, n in sup.groups():
        y = fn(*(x[rows, :n] for x in xs))
        for key, v in (y.items() if isinstance(y, dict) else [(None, y)]):
            out = outs.setdefault(key, np.zeros((sup.steps, sup.k) if per_entry else sup.steps))
            if per_entry:
                out[rows, :n] = v
            else:
                out[rows] = v
    return outs[None] if None in outs else outs


def centred_on(sup: Support, x: np.ndarray) -> np.ndarray:
    """``x`` ``(steps, k)`` centred per step over the returned entries; zeros on the padding."""
    return by_length(sup, centred, x, per_entry=True)


def departure(sup: Support, other_lr: np.ndarray) -> np.ndarray:
    """Centred difference ``(steps, k)`` between returned logprobs and another run's logprobs
    ``(steps, vocab)`` on the returned ids: zero for the same run whatever each step's constant
    (and zero on the padding of short rows)."""
    return centred_on(sup, sup.lps) - centred_on(sup, sup.on(other_lr))


def row_rms(sup: Support, d: np.ndarray) -> np.ndarray:
    """RMS per step ``(steps,)`` of a per-entry quantity ``(steps, k)`` over the returned entries."""
    return by_length(sup, lambda x: np.sqrt((x ** 2).mean(-1)), d)


def restricted_js(sup: Support, other_lr: np.ndarray) -> np.ndarray:
    """JS per step ``(steps,)`` between two runs renormalised on the returned ids."""
    return by_length(sup, lambda a, b: js(logsoftmax(a), logsoftmax(b)), sup.lps, sup.on(other_lr))


def _on_returned(lps: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    """The quantities read on the returned ids alone, for steps that all returned as many entries:
    ``lps`` and the reference's logprobs there ``r``, both ``(n_steps, n)``."""
    n = lps.shape[1]
    d = centred(lps) - centred(r)
    lo, lrs = logsoftmax(lps), logsoftmax(r)
    # the returned order is the observation's ranking; compare it with the reference values there
    order = -np.arange(n, dtype=np.float64)
    return {
        "drms": np.sqrt((d ** 2).mean(-1)), "dmax": np.abs(d).max(-1),
        "kl_or": kl(lo, lrs), "kl_ro": kl(lrs, lo), "js": js(lo, lrs),
        "spear": np.array([1.0 - spearman(order, row) for row in r]),
        "kendall": np.array([1.0 - kendall(order, row) for row in r]),
    }


def _misses(sup: Support, ref_lr: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(missmass, miss)`` per step against the reference's own top-k.

    A short row's missing entries are unknown ids the server ranked within its top-k. They are
    counted as the reference's own top-k ids absent from the returned ones, the most massive first:
    the completion most favourable to the reference. That makes both quantities lower bounds, exact
    for an exact replay and whenever the dropped ids were in the reference's top-k (the common
    case, the departures being small), and never turns an entry the server could not name into a
    departure. Dropping such rows instead (NaN) would leave nothing when every row is short, as
    with non-Latin text; scaling by ``k / n`` would read an exact replay as a departure.
    """
    k = sup.k
    ref_top = np.argpartition(-ref_lr, k - 1, axis=-1)[:, :k]
    p_top = np.exp(np.take_along_axis(ref_lr, ref_top, -1))
    ref_top_mass = p_top.sum(-1)
    mass = by_length(sup, lambda x: np.exp(x).sum(-1), r)
    gap = k - sup.mask.sum(-1)  # entries the server ranked in its top-k but did not name
    fill = np.zeros(sup.steps)
    if gap.any():
        named = ((ref_top[:, :, None] == sup.ids[:, None, :]) & sup.mask[:, None, :]).any(-1)
        unnamed = -np.sort(-np.where(named, 0.0, p_top), axis=-1)
        fill = np.where(np.arange(k)[None, :] < gap[:, None], unnamed, 0.0).sum(-1)
    hits = [len(np.intersect1d(a[m], b)) for a, m, b in zip(sup.ids, sup.mask, ref_top)]
    miss = np.array([1.0 - (h + int(g)) / k for h, g in zip(hits, gap)])
    return np.maximum(ref_top_mass - mass - fill, 0.0), miss


def per_step(sup: Support, ref_lr: np.ndarray) -> dict[str, np.ndarray]:
    r = sup.on(ref_lr)  # (S, k) reference logprobs on the returned ids
    out = by_length(sup, _on_returned, sup.lps, r)
    out["flip"] = (sup.ids[:, 0] != ref_lr.argmax(-1)).astype(np.float64)  # the first entry is always returned
    out["missmass"], out["miss"] = _misses(sup, ref_lr, r)
    return out


def names(tier: str) -> list[str]:
    t = tier
    out = [f"{t}.{q}" for q, _ in _REL] + [f"{t}.{q}" for q in _RAW]
    out += [f"{t}.js.{b}" for b in P.QUARTER_LABELS]
    out += [f"{t}.js.{b}" for b in P.DIST_LABELS] + [f"{t}.frac.{b}" for b in P.DIST_LABELS]
    return out


def compute(obs, ref, noise_obs, tier: str, probe=None) -> dict[str, float]:
    """Features of an observation restricted to a ``topk-k`` tier."""
    k = topk_of(tier)
    ref_lr = ref.ref.logprobs()
    q = per_step(support(obs, k), ref_lr)
    n = per_step(support(noise_obs, k), ref_lr) if noise_obs is not None else None
    floor = {key: (safe_mean(n[key]) if n is not None else 0.0) for key in q}
    out = {f"{tier}.{key}": rel(safe_mean(q[key]), floor[key], EPS[e]) for key, e in _REL}
    for key in _RAW:
        out[f"{tier}.{key}"] = safe_mean(q[key])
    out.update(P.js_profiles(tier, q["js"], len(obs.prompt_ids), probe, floor["js"],
                             lambda m, f: rel(m, f, EPS["js"])))
    return out
