"""The reference runner: a causal LM under a KV-cache compression scheme."""

from kvfp.runner.attach import attach
from kvfp.runner.cache import KvfpCache
from kvfp.runner.decode import generate, replay
from kvfp.runner.shared import replay_shared
from kvfp.runner.trace import Trace

__all__ = ["attach", "KvfpCache", "generate", "replay", "replay_shared", "Trace"]
