"""``kvfp query``: send a probe suite to any OpenAI-compatible endpoint and log what it returns.

Each answered probe becomes one line of the log, the response exactly as received plus the
``"kvfp"`` object naming the prompt it answers (``docs/log-formats.md``), ready for ``kvfp identify``.
"""

from kvfp.query.run import query
from kvfp.query.spec import QuerySpec

__all__ = ["query", "QuerySpec"]
