"""Probe families, one module each: the registry is this explicit list."""

from kvfp.probes.families import copy, distractor, needle, outlier, plain, recall, short

FAMILIES = {m.FAMILY: m.build for m in (needle, recall, copy, outlier, distractor, plain, short)}

__all__ = ["FAMILIES"]
