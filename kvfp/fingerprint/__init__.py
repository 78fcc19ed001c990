"""Fingerprinting: how observed outputs depart from the reference, and what that says."""

from kvfp.fingerprint.compare import TraceComparison, compare_traces

__all__ = ["compare_traces", "TraceComparison"]
