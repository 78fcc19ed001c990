"""Models kvfp runs: loading, the packaged kvfp-tiny and its training, GGUF-packaged models."""

from kvfp.models.gguf_models import GGUF_MODELS, gguf_source
from kvfp.models.loading import available, load, resolve

__all__ = ["load", "resolve", "available", "gguf_source", "GGUF_MODELS"]
