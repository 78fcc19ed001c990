"""Features: pure functions of an observation (restricted to a tier) and its reference replays."""

from kvfp.fingerprint.features.extract import FEATURES_VERSION, feature_matrix, feature_names, features

__all__ = ["features", "feature_names", "feature_matrix", "FEATURES_VERSION"]
