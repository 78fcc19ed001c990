"""One tier's figures from feature matrices and a fitted :class:`Fingerprinter`.

The arrays come from the protocol (:mod:`kvfp.fingerprint.evaluation.protocol`); the arithmetic
is in :mod:`kvfp.fingerprint.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvfp.fingerprint.estimators import Fingerprinter
from kvfp.fingerprint.estimators.openset import OpenSetDetector
from kvfp.fingerprint.evaluation import lookalike, metrics


def true_algorithm(label: str) -> str:
    """The gene's ``algorithm`` of a catalogue scheme name (what the gene head should say)."""
    from kvfp.compressors import parse_scheme

    return str(parse_scheme(label).gene.to_dict()["algorithm"])


def closed_set(fp: Fingerprinter, X: np.ndarray, y: Sequence[str], null_label: str = "none",
               alike: Sequence[set] | None = None) -> dict:
    """Scheme accuracy (argmax of the calibrated probabilities), gene-algorithm accuracy, macro-F1
    and the false-alarm rate (test ``null_label`` rows the verdict calls compressed); also the
    verdict's own accuracy (its false-alarm threshold and ``unknown`` answers count).

    Parameters
    ----------
    X : ``(n, d)`` test features of the tier ``fp`` was fitted on
    y : ``(n,)`` true scheme names
    alike : per row, the schemes indistinguishable from the true one on it
        (:mod:`~kvfp.fingerprint.evaluation.lookalike`); adds ``scheme_accuracy_lookalike``
    """
    y = [str(v) for v in y]
    P = fp.predict_proba(X)  # (n, K)
    pred = np.asarray(fp.classes_, dtype=object)[P.argmax(1)].tolist()
    ids = fp.identify(X)
    gene_acc = None
    if all(i.gene is not None for i in ids):
        gene_acc = metrics.accuracy([true_algorithm(v) for v in y], [str(i.gene["algorithm"]) for i in ids])
    null = [i.compressed for i, v in zip(ids, y) if v == null_label]
    return {"scheme_accuracy": metrics.accuracy(y, pred), "gene_accuracy": gene_acc,
            "macro_f1": metrics.macro_f1(y, pred), "false_alarm_rate": metrics.rate(null),
            "false_alarms": int(sum(null)), "null_observations": len(null),
            "verdict_accuracy": metrics.accuracy(y, [str(i.verdict) for i in ids]),
            **({"scheme_accuracy_lookalike": lookalike.accuracy(pred, alike),
                "lookalike_observations": int(sum(len(s) > 1 for s in alike))} if alike is not None else {})}


def candidate_columns(names: Sequence[str], scheme: str) -> np.ndarray:
    """``(d,)`` bool: feature columns that name ``scheme`` as a simulated candidate (``…[scheme]``)."""
    tag = f"[{scheme}]"
    return np.array([n.endswith(tag) for n in names], dtype=bool)


def without_candidate(X: np.ndarray, names: Sequence[str], scheme: str) -> tuple[np.ndarray, list[str]]:
    """Features as if ``scheme`` had never been simulated: its columns dropped, and each family's
    ``fitmin`` / ``fitgap`` (best fit over the candidates, gap to the second) recomputed from the
    candidates left, since they too would have picked up the scheme's own replay.

    Parameters
    ----------
    X : ``(n, d)`` features named ``names``

    Returns
    -------
    ``((n, d'), names')``
    """
    names = list(names)
    keep = ~candidate_columns(names, scheme)
    X = np.array(X, dtype=np.float64, copy=True)
    for j, name in enumerate(names):
        if not name.endswith(".fitmin"):
            continue
        prefix = name[: -len("fitmin")]
        fits = [i for i, n in enumerate(names) if n.startswith(prefix + "fit[") and keep[i]]
        vals = np.sort(X[:, fits], axis=1) if fits else np.zeros((len(X), 0))  # (n, candidates left)
        X[:, j] = vals[:, 0] if vals.shape[1] else 0.0
        X[:, names.index(prefix + "fitgap")] = vals[:, 1] - vals[:, 0] if vals.shape[1] > 1 else 0.0
    return X[:, keep], [n for n, k in zip(names, keep) if k]


def open_set(params: dict, X_train: np.ndarray, y_train: Sequence[str], groups: Sequence[str], X_test: np.ndarray,
             y_test: Sequence[str], names: Sequence[str], held_out: Sequence[str]) -> dict:
    """Leave-one-scheme-out open-set AUROC.

    For each held-out scheme the open-set detector (the :class:`Fingerprinter`'s own, with its
    parameters ``params``) is refitted without that scheme's training rows and without the
    feature columns that simulate it as a candidate, so the scheme is new in every respect; its
    ``novelty`` on the held-out scheme's test rows (positives) is compared with the novelty of the
    other schemes' test rows (negatives); see :func:`without_candidate`. Only the detector is
    refitted: the novelty score is its output alone, so refitting the whole stack would give the
    same numbers more slowly.

    Returns
    -------
    ``{"auroc": mean over held-out schemes, "per_scheme": {scheme: auroc}}`` (``auroc`` is
    ``None`` when no scheme could be held out)
    """
    y_train, y_test = np.asarray(y_train, dtype=object), np.asarray(y_test, dtype=object)
    groups = np.asarray(groups)
    per = {}
    for s in held_out:
        keep_rows, pos = y_train != s, y_test == s
        if not pos.any() or len(set(y_train[keep_rows].tolist())) < 2:
            continue
        Xa, _ = without_candidate(X_train[keep_rows], names, s)
        Xb, _ = without_candidate(X_test, names, s)
        det = OpenSetDetector(target_false_reject=params["target_false_reject"], shrinkage=params["shrinkage"],
                              cv=params["cv"], random_state=params["random_state"])
        det.fit(Xa, y_train[keep_rows], groups[keep_rows])
        nov = det.novelty(Xb)
        per[s] = metrics.auroc(nov[pos], nov[~pos])
    return {"auroc": float(np.mean(list(per.values()))) if per else None, "per_scheme": per}


def endpoints(fp: Fingerprinter, X: np.ndarray, y: Sequence[str], alike: Sequence[set] | None = None) -> dict:
    """What an auditor gets: each served scheme's test observations pooled into one verdict, as
    ``kvfp identify`` pools a log (:meth:`Fingerprinter.identify_pooled`).

    Returns ``endpoint_accuracy`` (the pooled top scheme is the served one),
    ``endpoint_gene_accuracy`` (the pooled gene's algorithm), ``endpoints`` (how many), and with
    ``alike`` ``endpoint_accuracy_lookalike`` (the pooled top scheme gives the served scheme's
    outputs on every one of its probes) and ``endpoint_misses`` (``[served, named]``).
    """
    y = np.asarray([str(v) for v in y], dtype=object)
    top, genes, misses, forgiven = [], [], [], []
    served = sorted(set(y.tolist()))
    for s in served:
        rows = np.flatnonzero(y == s)
        ident = fp.identify_pooled(X[rows])
        named = str(ident.schemes[0][0])
        top.append(named == s)
        genes.append(ident.gene is not None and str(ident.gene["algorithm"]) == true_algorithm(s))
        if named != s:
            misses.append([s, named])
        if alike is not None:
            forgiven.append(all(named in alike[i] for i in rows))
    out = {"endpoints": len(served), "endpoint_accuracy": float(np.mean(top)) if served else None,
           "endpoint_gene_accuracy": float(np.mean(genes)) if served else None, "endpoint_misses": misses}
    if alike is not None:
        out["endpoint_accuracy_lookalike"] = float(np.mean(forgiven)) if served else None
    return out


def pair_scores(fp: Fingerprinter, X: np.ndarray, pair: tuple[str, str]) -> np.ndarray:
    """``(n,)`` per-observation evidence for ``pair[0]`` over ``pair[1]``: ``log P(a) − log P(b)``
    from the calibrated scheme classifier (pooling observations adds these up)."""
    labels = [str(c) for c in fp.classes_]
    a, b = labels.index(pair[0]), labels.index(pair[1])
    logp = np.log(np.maximum(fp.predict_proba(X), 1e-300))  # (n, K)
    return logp[:, a] - logp[:, b]
