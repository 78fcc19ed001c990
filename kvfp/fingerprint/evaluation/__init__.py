"""``kvfp evaluate``: the fingerprinting benchmark (protocol, metrics, report)."""

from kvfp.fingerprint.evaluation.protocol import Protocol, run

__all__ = ["Protocol", "run"]
