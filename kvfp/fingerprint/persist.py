"""Trained fingerprinters on disk, without pickle.

A saved classifier is a folder holding two files:

* ``arrays.safetensors`` — every fitted array (scalers, coefficients, centroids…), safetensors
  being a format that holds tensors and nothing else;
* ``fingerprinter.json`` — the manifest (model, weights hash, tokenizer hash, probe suite hash,
  tiers, candidate schemes, feature and kvfp versions), the feature names per tier, and each
  estimator's hyper-parameters, labels and small numbers.

Loading parses JSON and reads tensors; estimator classes are found by name in an explicit table
(:data:`kvfp.fingerprint.estimators.ESTIMATOR_TYPES`), so nothing named in the file is imported
or evaluated. A classifier is tied to one model and tokenizer: :func:`load_fingerprinter`
refuses, naming what differs, to load one built for another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvfp.errors import KvfpError
from kvfp.fingerprint.estimators import ESTIMATOR_TYPES, Fingerprinter, Identification
from kvfp.fingerprint.estimators.state import get_state, set_state
from kvfp.fingerprint.features.extract import FEATURES_VERSION, feature_names
from kvfp.fingerprint.integrity import DIGEST_KEY, check_digest, check_finite, make_digest, trial_predictions
from kvfp.fingerprint.observation import TIERS
from kvfp.json_input import parse_json

KIND = "kvfp-fingerprinter"
# format 2 records an integrity digest (kvfp.fingerprint.integrity); format 1 files, saved before it
# existed, still load, with every other check, and say that their digest is unchecked
FORMAT = 2
READABLE_FORMATS = (1, 2)
JSON_NAME, ARRAYS_NAME = "fingerprinter.json", "arrays.safetensors"


def tokenizer_hash(tokenizer) -> str:
    """sha256 of a tokenizer's definition; the probes package's helper where it exists."""
    try:
        from kvfp.probes.identity import tokenizer_hash as probes_hash
    except ImportError:
        probes_hash = None
    if probes_hash is not None:
        return probes_hash(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise KvfpError("this tokenizer has no tokenizers backend JSON to hash; use a fast tokenizer")
    spec = json.loads(backend.to_str())
    for key in ("truncation", "padding"):  # runtime settings, not part of what text maps to
        spec.pop(key, None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def make_manifest(model, tokenizer, *, model_id: str | None = None, probe_suite_hash: str | None = None,
                  candidates: Sequence[str] = (), engine=None) -> dict:
    """What a trained fingerprinter is tied to, computed from the model and tokenizer it was built with."""
    from kvfp import __version__
    from kvfp.compressors.calibration import model_fingerprint
    from kvfp.fingerprint.reference import NOISE, REFERENCE

    return {
        "model_id": model_id or getattr(model, "kvfp_name", None) or getattr(model, "name_or_path", None),
        "weights_hash": model_fingerprint(model),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "probe_suite_hash": probe_suite_hash,
        "candidates": list(candidates),
        "reference": {"scheme": REFERENCE[0], "dtype": REFERENCE[1], "attn": REFERENCE[2]},
        "noise": {"scheme": NOISE[0], "dtype": NOISE[1], "attn": NOISE[2]},
        # the engine profile of the noise yardstick (kvfp.runner.engines); identify uses the same
        "engine": None if engine is None else engine.describe(),
        "features_version": FEATURES_VERSION,
        "kvfp_version": __version__,
    }


@dataclass
class TrainedFingerprinter:
    """One :class:`Fingerprinter` per tier, with what is needed to apply them to new observations.

    Attributes
    ----------
    manifest : see :func:`make_manifest` (``tiers`` is added from :attr:`tiers`)
    tiers : ``{tier: Fingerprinter}`` (fitted)
    feature_names : ``{tier: [names]}`` in column order
    """

    manifest: dict
    tiers: dict[str, Fingerprinter] = field(default_factory=dict)
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what loading could not vouch for

    @classmethod
    def fit(cls, manifest: dict, X: dict[str, np.ndarray], y, groups=None, **params) -> TrainedFingerprinter:
        """Fit a :class:`Fingerprinter` (with ``params``) for each tier of ``X`` on labels ``y``;
        ``groups`` (the probe of each row) makes held-out estimates hold out whole probes."""
        cands = manifest.get("candidates") or []
        # the features being fitted were computed by this kvfp: record their version with them
        out = cls(manifest={**manifest, "features_version": FEATURES_VERSION})
        for tier, Xt in X.items():
            names = feature_names(tier, cands)
            if Xt.shape[1] != len(names):
                raise KvfpError(f"tier {tier}: {Xt.shape[1]} feature columns but {len(names)} feature names for "
                                f"{len(cands)} candidate schemes; were the features built with another candidate list?")
            out.tiers[tier] = Fingerprinter(**{"feature_names": names, **params}).fit(Xt, y, groups)
            out.feature_names[tier] = names
        return out

    @property
    def candidates(self) -> list[str]:
        return list(self.manifest.get("candidates") or [])

    def reference_runner(self, model, **kwargs):
        """A :class:`~kvfp.fingerprint.reference.ReferenceRunner` simulating this classifier's candidates."""
        from kvfp.fingerprint.reference import ReferenceRunner

        return ReferenceRunner(model, self.candidates, engine=self.engine(), **kwargs)

    def engine(self):
        """The engine profile this classifier's noise yardstick ran under (``None``: bf16/sdpa)."""
        from kvfp.runner.engines import profile_from_description

        return profile_from_description(self.manifest.get("engine"), self.manifest.get("model_id"))

    def identify(self, X: np.ndarray, tier: str, *, pooled: bool = False, top: int = 5):
        """Identifications of feature rows ``(n, d)`` of ``tier`` (one pooled verdict with ``pooled``)."""
        if tier not in self.tiers:
            raise KvfpError(f"this classifier has no {tier!r} tier (it has {', '.join(self.tiers) or 'none'})",
                            exit_code=2)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names[tier]):
            raise KvfpError(f"tier {tier}: expected rows of {len(self.feature_names[tier])} features, got shape "
                            f"{X.shape}")
        fp = self.tiers[tier]
        return fp.identify_pooled(X, top=top) if pooled else fp.identify(X, top=top)

    def identify_observations(self, observations, runner, tier: str, probes: dict | None = None, *,
                              pooled: bool = False, top: int = 5) -> list[Identification] | Identification:
        """Features (replayed by ``runner``, whose candidates must be this classifier's) then identify."""
        from kvfp.fingerprint.features import feature_matrix

        if list(runner.candidates) != self.candidates:
            raise KvfpError("the reference runner simulates other candidate schemes than this classifier was "
                            f"trained with ({len(runner.candidates)} vs {len(self.candidates)}); build it with "
                            "candidates=trained.candidates")
        X = feature_matrix(observations, runner, [tier], probes)[tier]
        return self.identify(X, tier, pooled=pooled, top=top)


def save_fingerprinter(path: Path | str, trained: TrainedFingerprinter) -> Path:
    """Write ``trained`` as a new folder ``path`` (atomically: built beside it, then renamed).

    Never overwrites: an existing ``path`` is a :class:`KvfpError`.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    path = Path(path)
    if path.exists():
        raise KvfpError(f"{path} already exists; kvfp never overwrites output. Choose another path.", exit_code=2)
    if not trained.tiers:
        raise KvfpError("nothing to save: the fingerprinter has no fitted tier")
    arrays, tiers_meta = {}, {}
    for tier, fp in trained.tiers.items():
        a, m = get_state(fp, prefix=f"{tier}/")
        arrays.update(a)
        tiers_meta[tier] = m
    doc = {"kind": KIND, "format": FORMAT, "manifest": {**trained.manifest, "tiers": list(trained.tiers)},
           "feature_names": trained.feature_names, "estimators": tiers_meta}
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    # the document as it will read back (tuples become lists), so that its digest matches at load time
    doc = json.loads(json.dumps(doc, allow_nan=False))
    doc[DIGEST_KEY] = make_digest(doc, arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            save_file(arrays, str(tmp / ARRAYS_NAME))
        except SafetensorError as e:  # safetensors reports a failed write (a full disk) as its own error
            raise KvfpError(f"cannot write {path}: {' '.join(str(e).split())}") from None
        (tmp / JSON_NAME).write_text(json.dumps(doc, indent=1, allow_nan=False))
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _no_constants(name: str):
    raise ValueError(f"{name} is not allowed")


def _short(h) -> str:
    return str(h)[:16] if h else "(not recorded)"


def check_manifest(manifest: dict, where: str, *, model_id: str | None = None, weights_hash: str | None = None,
                   tokenizer_hash: str | None = None, probe_suite_hash: str | None = None) -> None:
    """Raise a :class:`KvfpError` naming every way ``manifest`` differs from what is given.

    A different ``model_id`` is accepted when both weights hashes are known and equal (the same
    weights loaded from another path).
    """
    problems = []
    if manifest.get("features_version") != FEATURES_VERSION:
        problems.append(f"its features are version {manifest.get('features_version')}, this kvfp computes version "
                        f"{FEATURES_VERSION} (retrain it)")
    same_weights = weights_hash is not None and manifest.get("weights_hash") == weights_hash
    if weights_hash is not None and manifest.get("weights_hash") != weights_hash:
        problems.append(f"it was trained for model {manifest.get('model_id')!r} with weights hash "
                        f"{_short(manifest.get('weights_hash'))}, the model given has weights hash "
                        f"{_short(weights_hash)}")
    if model_id is not None and manifest.get("model_id") != model_id and not same_weights:
        problems.append(f"it was trained for model {manifest.get('model_id')!r}, not {model_id!r}")
    if tokenizer_hash is not None and manifest.get("tokenizer_hash") != tokenizer_hash:
        problems.append(f"it was trained with tokenizer hash {_short(manifest.get('tokenizer_hash'))}, the tokenizer "
                        f"given hashes to {_short(tokenizer_hash)}")
    if probe_suite_hash is not None and manifest.get("probe_suite_hash") != probe_suite_hash:
        problems.append(f"it was trained on probe suite {_short(manifest.get('probe_suite_hash'))}, the suite given "
                        f"is {_short(probe_suite_hash)}")
    if problems:
        raise KvfpError(f"refusing to use the classifier in {where}: " + "; ".join(problems) + ".", exit_code=2)


def load_fingerprinter(path: Path | str, *, model_id: str | None = None, weights_hash: str | None = None,
                       tokenizer_hash: str | None = None, probe_suite_hash: str | None = None) -> TrainedFingerprinter:
    """Load a folder written by :func:`save_fingerprinter`, checking it against the model at hand.

    Every given identity (``model_id``, ``weights_hash`` from
    :func:`kvfp.compressors.calibration.model_fingerprint`, ``tokenizer_hash`` from
    :func:`tokenizer_hash`, ``probe_suite_hash``) must match the manifest; a mismatch is a
    :class:`KvfpError` naming what differs. No code from the file runs.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    jpath, apath = path / JSON_NAME, path / ARRAYS_NAME
    if not jpath.is_file() or not apath.is_file():
        raise KvfpError(f"{path} is not a saved kvfp classifier (it needs {JSON_NAME} and {ARRAYS_NAME})", exit_code=2)
    doc = parse_json(jpath.read_bytes(), str(jpath), parse_constant=_no_constants)
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise KvfpError(f"{jpath}: not a kvfp classifier file")
    if doc.get("format") not in READABLE_FORMATS:
        raise KvfpError(f"{jpath}: classifier format {doc.get('format')!r}; this kvfp reads formats "
                        f"{', '.join(map(str, READABLE_FORMATS))}")
    manifest = doc.get("manifest") or {}
    check_manifest(manifest, str(path), model_id=model_id, weights_hash=weights_hash, tokenizer_hash=tokenizer_hash,
                   probe_suite_hash=probe_suite_hash)
    try:
        arrays = load_file(str(apath))
    except Exception as e:  # safetensors reports a damaged file in several exception types
        raise KvfpError(f"{apath}: unreadable ({type(e).__name__}: {e})") from None
    out = TrainedFingerprinter(manifest=manifest)
    if doc["format"] >= 2:
        check_digest(doc, arrays, str(path))
    else:
        out.notes.append(f"the classifier in {path} was saved by an older kvfp without an integrity digest: "
                         f"damage to its files is caught only where it makes values non-finite or inconsistent "
                         f"(retrain it to have it checked)")
    check_finite(arrays, str(path))
    try:
        for tier, meta in doc["estimators"].items():
            if tier not in TIERS:
                raise ValueError(f"unknown tier {tier!r}")
            fp = set_state(meta, arrays, ESTIMATOR_TYPES, prefix=f"{tier}/")
            if not isinstance(fp, Fingerprinter):
                raise ValueError(f"tier {tier} holds a {type(fp).__name__}, not a Fingerprinter")
            names = [str(n) for n in doc["feature_names"][tier]]
            if fp.n_features_in_ != len(names):
                raise ValueError(f"tier {tier}: {len(names)} feature names for {fp.n_features_in_} features")
            out.tiers[tier] = fp
            out.feature_names[tier] = names
    except (KeyError, TypeError, ValueError) as e:
        raise KvfpError(f"{path}: damaged classifier ({type(e).__name__}: {e})") from None
    _check_candidates(out.candidates, path)
    trial_predictions(out, str(path))
    return out


def _check_candidates(candidates, path: Path) -> None:
    """Every candidate the classifier replays must be a scheme this kvfp knows; the message names the
    classifier, not the grammar (the user never typed that name)."""
    from kvfp.compressors import parse_scheme

    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise KvfpError(f"{path}: damaged classifier (manifest.candidates is not a list of scheme names)", exit_code=2)
    for c in candidates:
        try:
            parse_scheme(c)
        except KvfpError:
            raise KvfpError(f"{path}: the classifier replays candidate scheme {c!r}, which this kvfp does not know "
                            f"(trained by another kvfp version, or altered)", exit_code=2) from None


def load_for_model(path: Path | str, model, tokenizer, *, model_id: str | None = None,
                   probe_suite_hash: str | None = None) -> TrainedFingerprinter:
    """:func:`load_fingerprinter`, checked against a loaded model and tokenizer (their hashes are
    computed here, so a caller cannot forget to pass them)."""
    from kvfp.compressors.calibration import model_fingerprint

    return load_fingerprinter(path, model_id=model_id, weights_hash=model_fingerprint(model),
                              tokenizer_hash=tokenizer_hash(tokenizer), probe_suite_hash=probe_suite_hash)


__all__ = ["TrainedFingerprinter", "save_fingerprinter", "load_fingerprinter", "load_for_model", "make_manifest",
           "check_manifest", "tokenizer_hash"]
