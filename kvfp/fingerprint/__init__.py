"""Fingerprinting: how observed outputs depart from the reference, and what that says.

Public API (imported lazily, so that reading observations does not load torch or scikit-learn):

* observations — :class:`Observation`, :data:`TIERS`, :func:`from_trace`
* reference replays — :class:`ReferenceRunner`, :class:`Reference`, :class:`Replay`
* features — :func:`extract_features` (``kvfp.fingerprint.features.features``; the short name is
  the subpackage's here), :func:`feature_names`, :func:`feature_matrix`, :data:`FEATURES_VERSION`
* classifiers — :class:`SchemeClassifier`, :class:`GeneHeads`, :class:`OpenSetDetector`,
  :class:`Fingerprinter`, :class:`Identification`
* persistence — :class:`TrainedFingerprinter`, :func:`save_fingerprinter`, :func:`load_fingerprinter`,
  :func:`load_for_model`, :func:`make_manifest`, :func:`tokenizer_hash`
* trace comparison — :func:`compare_traces`, :class:`TraceComparison`
"""

from importlib import import_module

_EXPORTS = {
    "Observation": "observation", "TIERS": "observation", "from_trace": "observation",
    "ReferenceRunner": "reference", "Reference": "reference", "Replay": "reference",
    "extract_features": "features", "feature_names": "features", "feature_matrix": "features",
    "FEATURES_VERSION": "features",
    "SchemeClassifier": "estimators", "GeneHeads": "estimators", "OpenSetDetector": "estimators",
    "Fingerprinter": "estimators", "Identification": "estimators",
    "TrainedFingerprinter": "persist", "save_fingerprinter": "persist", "load_fingerprinter": "persist",
    "load_for_model": "persist",
    "make_manifest": "persist", "tokenizer_hash": "persist",
    "compare_traces": "compare", "TraceComparison": "compare",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name == "extract_features":
        return import_module("kvfp.fingerprint.features.extract").features
    if name in _EXPORTS:
        return getattr(import_module(f"kvfp.fingerprint.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kvfp.fingerprint' has no attribute {name!r}")
