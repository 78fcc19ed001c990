"""kvfp: fingerprint the KV-cache compression scheme behind an LLM endpoint."""

from kvfp.errors import KvfpError, UnknownNameError

__version__ = "0.1.0"
__all__ = ["KvfpError", "UnknownNameError", "__version__"]
