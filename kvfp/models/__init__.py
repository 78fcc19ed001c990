"""Models kvfp runs: loading, the packaged kvfp-tiny and its training."""

from kvfp.models.loading import available, load, resolve

__all__ = ["load", "resolve", "available"]
