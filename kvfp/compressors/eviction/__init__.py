"""Eviction and selection schemes: which tokens attention sees (role ``eviction``)."""

from kvfp.compressors.eviction.window import SlidingWindow

FAMILIES = (SlidingWindow,)
