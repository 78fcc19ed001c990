"""Collection: run schemes over a probe suite into a dataset folder (resumable, multi-process)."""

from kvfp.collect.run import collect
from kvfp.collect.spec import CollectSpec, expand_schemes

__all__ = ["collect", "CollectSpec", "expand_schemes"]
