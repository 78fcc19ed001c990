"""``kvfp serve``: an OpenAI-compatible endpoint serving a kvfp model under any catalogue scheme.

A mystery endpoint to practise auditing on, to teach with, and to test ``kvfp query`` against over
real HTTP. Greedy decoding only: kvfp's evidence is the distribution, not samples from it.
"""

from kvfp.serve.app import make_app
from kvfp.serve.backend import Backend, ServeConfig

__all__ = ["make_app", "Backend", "ServeConfig"]
