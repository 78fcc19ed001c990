"""``Fingerprinter``: scheme classifier, gene heads and open-set test, used together.

``predict`` / ``predict_proba`` are the closed-set scheme classifier (scikit-learn's classifier
contract); :meth:`Fingerprinter.identify` is the forensic answer: ranked schemes with calibrated
probabilities, whether the evidence fits any known scheme at all, the gene heads' description
(which also describes a scheme that is not in the catalogue), and a verdict.

The verdict needs evidence to call an endpoint compressed: a sample is *compressed* only when the
probability of the uncompressed class falls below a threshold set on held-out uncompressed
training samples (those include bf16, sdpa and batched serving), so that at most
``target_false_alarm`` of them would be called compressed. Weak evidence (a tokens-only sample
without a single flipped token) therefore says "none", not the most likely of many look-alikes.

The gene of a sample that fits a known scheme is read off the scheme posterior: the probability
of each value of a categorical field (and of each element of a set field) is the summed
probability of the known schemes whose gene has it. On the quick protocol that named the
algorithm of 0.942 of the logits-tier test samples against 0.873 for the gene head, and 0.618
against 0.521 at the tokens tier. The gene heads describe samples the open-set test calls unknown,
for which the posterior over known schemes says nothing, and give the parameter estimates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from kvfp.fingerprint.estimators.genes import GeneHeads, _split
from kvfp.fingerprint.estimators.openset import OpenSetDetector
from kvfp.fingerprint.estimators.scheme import SchemeClassifier

# Gene fields as heads (SCHEMES.md); parameters regressed on scales where their effects are even.
GENE_HEADS = (
    ("algorithm", "class"), ("granularity", "set"), ("strategy", "class"), ("importance", "class"),
    ("compensation", "set"), ("phase", "class"),
    ("log2_bits", "reg"), ("budget", "reg"), ("log2_window", "reg"), ("log2_rank", "reg"),
)
_PARAMS = (("bits", "log2_bits", True), ("budget", "budget", False), ("window", "log2_window", True),
           ("rank", "log2_rank", True))


def gene_row(gene: dict) -> list:
    """A gene dict (``Gene.to_dict()``) as one row of the gene heads' target."""
    p = gene.get("params", {}) or {}

    def log2(key):
        v = p.get(key)
        return math.log2(v) if isinstance(v, (int, float)) and v > 0 else np.nan

    budget = p.get("budget")
    return [gene["algorithm"], "+".join(sorted(gene.get("granularity", ()))), gene.get("strategy", "static"),
            gene.get("importance", "none"), "+".join(sorted(gene.get("compensation", ()))), gene.get("phase", "both"),
            log2("bits"), float(budget) if isinstance(budget, (int, float)) else np.nan, log2("window"), log2("rank")]


def registry_gene(label) -> dict | None:
    """The gene of a scheme name from kvfp's catalogue, or ``None`` for a label that is not one."""
    from kvfp.compressors import parse_scheme
    from kvfp.errors import KvfpError

    try:
        return parse_scheme(str(label)).gene.to_dict()
    except KvfpError:
        return None


@dataclass
class Identification:
    """What the fingerprinter says about one sample (or one pooled set of samples).

    Attributes
    ----------
    verdict : the decision: the uncompressed label (``"none"``) when the evidence does not show
        compression, else ``"unknown"`` when it fits no known scheme, else the most probable
        compressed scheme
    schemes : ``[(scheme, probability)]``, most probable first (closed-set, calibrated)
    compressed : the probability of the uncompressed class is below the false-alarm threshold
    unknown : the evidence fits no known scheme (open-set test)
    novelty, threshold : the open-set score and the level above which it means "unknown"
    gene : the gene heads' description (field → value; ``None`` without gene heads); given even
        for an unknown scheme, which is what it is for
    gene_proba : per field, the probability of each value (sets: of each element)
    params : parameter estimates where the heads say the parameter applies (``bits``, ``budget``,
        ``window``, ``rank``)
    gene_source : ``"scheme posterior"`` (the sample fits known schemes) or ``"gene heads"``
    """

    verdict: object
    schemes: list[tuple]
    compressed: bool
    unknown: bool
    novelty: float
    threshold: float
    gene: dict | None = None
    gene_proba: dict | None = None
    params: dict = field(default_factory=dict)
    gene_source: str | None = None

    @property
    def scheme(self):
        """Alias of :attr:`verdict`."""
        return self.verdict

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schemes"] = [[s, p] for s, p in self.schemes]
        return d


class Fingerprinter(ClassifierMixin, BaseEstimator):
    """The classifier stack over feature vectors of one tier.

    Parameters
    ----------
    C : inverse regularisation of every logistic model
    cv : folds for calibration and for the open-set threshold
    target_false_reject : fraction of known-scheme samples the open-set test may call unknown
    shrinkage : covariance shrinkage of the open-set test
    null_label : the label of the uncompressed scheme
    target_false_alarm : fraction of held-out ``null_label`` samples that may be called compressed
    genes : ``{label: gene dict}``; ``None`` looks each label up in kvfp's catalogue
        (:func:`kvfp.compressors.parse_scheme`). Gene heads are trained only when every label has
        a gene; otherwise ``gene_heads_`` is ``None`` and identifications carry no gene
    max_iter, random_state : as :class:`SchemeClassifier`
    feature_names : names of the feature columns, passed to :class:`SchemeClassifier` (its
        candidate features then share weights across classes); ``None``: a plain model

    Attributes
    ----------
    classes_ : scheme labels
    scheme_ : :class:`SchemeClassifier`
    open_set_ : :class:`OpenSetDetector`
    gene_heads_ : :class:`GeneHeads` or ``None``
    genes_ : ``{label: gene dict}`` used for training (empty without gene heads)
    null_threshold_ : a sample is compressed when ``P(null_label)`` is below it (2.0, i.e. always,
        when no training sample has the null label)
    n_iter_ : iterations of the scheme classifier's logistic regression
    """

    _state_arrays = ()
    _state_array_dicts = ()
    _state_json = ("classes_", "genes_", "null_threshold_", "n_iter_", "n_features_in_", "feature_names_in_")
    _state_children = ("scheme_", "open_set_", "gene_heads_")

    def __init__(self, C=1.0, cv=5, target_false_reject=0.01, shrinkage=0.5, null_label="none",
                 target_false_alarm=0.01, genes=None, max_iter=2000, random_state=0, feature_names=None):
        self.C = C
        self.cv = cv
        self.target_false_reject = target_false_reject
        self.shrinkage = shrinkage
        self.null_label = null_label
        self.target_false_alarm = target_false_alarm
        self.genes = genes
        self.max_iter = max_iter
        self.random_state = random_state
        self.feature_names = feature_names

    def fit(self, X, y, groups=None):
        """Fit on ``(n, d)`` features and scheme labels. ``groups`` (e.g. the probe of each sample)
        makes every held-out estimate (calibration, open-set threshold, false-alarm threshold)
        hold out whole groups, as new probes will be."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        if not 0.0 <= self.target_false_alarm < 1.0:
            raise ValueError(f"target_false_alarm must be in [0, 1), got {self.target_false_alarm!r}")
        self.scheme_ = SchemeClassifier(C=self.C, cv=self.cv, max_iter=self.max_iter, random_state=self.random_state,
                                        feature_names=self.feature_names).fit(X, y, groups)
        self.classes_, self.n_iter_ = self.scheme_.classes_, self.scheme_.n_iter_
        self.null_threshold_ = self._null_threshold(X, y)
        self.open_set_ = OpenSetDetector(target_false_reject=self.target_false_reject, shrinkage=self.shrinkage,
                                         cv=self.cv, random_state=self.random_state).fit(X, y, groups)
        lookup = self.genes if self.genes is not None else {}
        genes = {}
        for lab in self.classes_.tolist():
            g = lookup.get(lab) if self.genes is not None else registry_gene(lab)
            if g is None:
                genes = {}
                break
            genes[str(lab)] = g
        self.genes_ = genes
        self.gene_heads_ = None
        if genes:
            Y = np.array([gene_row(genes[str(lab)]) for lab in y.tolist()], dtype=object)
            self.gene_heads_ = GeneHeads(heads=GENE_HEADS, C=self.C, cv=self.cv, max_iter=self.max_iter,
                                         random_state=self.random_state).fit(X, Y, groups)
        return self

    def _null_threshold(self, X, y) -> float:
        labels = self.classes_.tolist()
        if self.null_label not in labels:
            return 2.0
        j = labels.index(self.null_label)
        P = self.scheme_._oof_proba
        if P is None:  # nothing could be held out: in-sample probabilities are the best there is
            P = self.scheme_.predict_proba(X)
        p_null = P[np.asarray(y == self.null_label), j]
        return float(np.quantile(p_null, self.target_false_alarm, method="lower"))

    def predict(self, X):
        check_is_fitted(self)
        return self.scheme_.predict(X)

    def predict_proba(self, X):
        check_is_fitted(self)
        return self.scheme_.predict_proba(X)

    def predict_log_proba(self, X):
        check_is_fitted(self)
        return self.scheme_.predict_log_proba(X)

    def decision_function(self, X):
        check_is_fitted(self)
        return self.scheme_.decision_function(X)

    def identify(self, X, top: int = 5) -> list[Identification]:
        """Per sample: ranked schemes, unknown flag, gene description and parameter estimates."""
        check_is_fitted(self)
        P = self.scheme_.predict_proba(X)
        nov = self.open_set_.novelty(X)
        desc = self.gene_heads_.describe(X) if self.gene_heads_ is not None else [None] * len(P)
        return [self._one(np.log(np.maximum(P[i], 1e-300)), float(nov[i]), bool(nov[i] > self.open_set_.threshold_),
                          desc[i], top) for i in range(len(P))]

    def is_compressed(self, X) -> np.ndarray:
        """``(n,)`` bool: the evidence shows compression (see the module docstring)."""
        check_is_fitted(self)
        return self._compressed(self.scheme_.predict_proba(X))

    def _compressed(self, P: np.ndarray) -> np.ndarray:
        labels = self.classes_.tolist()
        if self.null_label not in labels:
            return np.ones(len(P), dtype=bool)
        return P[:, labels.index(self.null_label)] < self.null_threshold_

    def identify_pooled(self, X, top: int = 5) -> Identification:
        """One verdict from many samples of the same endpoint (e.g. every probe of a suite).

        Class log-probabilities add up (independent evidence, as a product of experts); the gene
        heads' probabilities are pooled the same way and their estimates by median; the endpoint
        is unknown when most of its samples are.
        """
        check_is_fitted(self)
        logp = self.scheme_.predict_log_proba(X).sum(0)
        nov = self.open_set_.novelty(X)
        unknown = bool(np.mean(nov > self.open_set_.threshold_) > 0.5)
        desc = None
        if self.gene_heads_ is not None:
            desc = _pool_descriptions(self.gene_heads_.describe(X))
        return self._one(logp, float(np.median(nov)), unknown, desc, top)

    def _one(self, logp: np.ndarray, novelty: float, unknown: bool, desc: dict | None, top: int) -> Identification:
        p = np.exp(logp - logp.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        labels = self.classes_.tolist()
        schemes = [(labels[j], float(p[j])) for j in order[:top]]
        compressed = bool(self._compressed(p[None, :])[0])
        if not compressed:
            verdict = self.null_label
        elif unknown:
            verdict = "unknown"
        else:
            verdict = next(labels[j] for j in order if labels[j] != self.null_label)
        gene = gene_proba = None
        params = {}
        source = None
        if desc is not None:
            source = "gene heads"
            if not unknown:
                desc = self._posterior_gene(p, desc)
                source = "scheme posterior"
            gene = {k: v["value"] for k, v in desc.items() if "proba" in v}
            gene_proba = {k: v["proba"] for k, v in desc.items() if "proba" in v}
            for name, head, is_log2 in _PARAMS:
                v = desc[head]["value"]
                if v is not None:
                    params[name] = float(2.0 ** v) if is_log2 else float(v)
        return Identification(verdict=verdict, schemes=schemes, compressed=compressed, unknown=unknown, novelty=novelty,
                              threshold=float(self.open_set_.threshold_), gene=gene, gene_proba=gene_proba,
                              params=params, gene_source=source)

    def _posterior_gene(self, p: np.ndarray, desc: dict) -> dict:
        """``desc`` with its categorical and set fields replaced by the scheme posterior ``p``'s
        marginals (see the module docstring); parameter heads are kept."""
        rows = [gene_row(self.genes_[str(lab)]) for lab in self.classes_.tolist()]
        out = dict(desc)
        for j, (name, kind) in enumerate(GENE_HEADS):
            if kind == "class":
                proba = {}
                for r, q in zip(rows, p):
                    proba[r[j]] = proba.get(r[j], 0.0) + float(q)
                out[name] = {"value": max(proba, key=proba.get), "proba": proba}
            elif kind == "set":
                sets = [_split(r[j]) for r in rows]
                elements = sorted(set().union(*sets))
                proba = {e: float(sum(q for es, q in zip(sets, p) if e in es)) for e in elements}
                out[name] = {"value": [e for e, q in proba.items() if q >= 0.5], "proba": proba}
        return out


def _pool_descriptions(rows: list[dict]) -> dict:
    out = {}
    for name, first in rows[0].items():
        if "proba" in first:
            labels = list(first["proba"])
            P = np.array([[r[name]["proba"][lab] for lab in labels] for r in rows])
            if isinstance(first["value"], list):  # a set: each element's evidence pooled on its own
                lo = np.log(np.clip(P, 1e-12, 1)).sum(0)
                lno = np.log(np.clip(1 - P, 1e-12, 1)).sum(0)
                proba = {lab: float(1.0 / (1.0 + np.exp(np.clip(b - a, -700, 700))))
                         for lab, a, b in zip(labels, lo, lno)}
                out[name] = {"value": [lab for lab, q in proba.items() if q >= 0.5], "proba": proba}
            else:
                lp = np.log(np.clip(P, 1e-300, 1)).sum(0)
                q = np.exp(lp - lp.max())
                q /= q.sum()
                proba = {lab: float(v) for lab, v in zip(labels, q)}
                out[name] = {"value": max(proba, key=proba.get), "proba": proba}
        else:
            applies = float(np.mean([r[name]["applies"] for r in rows]))
            vals = [r[name]["value"] for r in rows if r[name]["value"] is not None]
            out[name] = {"value": float(np.median(vals)) if applies >= 0.5 and vals else None, "applies": applies}
    return out
