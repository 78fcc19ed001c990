"""Short-context controls: prompts that fixed-window eviction keeps whole.

A sliding window or sinks-plus-window scheme evicts nothing here, so only what a scheme stores
(quantization, projection, merging) moves the logits; comparing a scheme's short and long probes
separates what it stores from what it drops. Budgets given as a fraction of the prompt (H2O,
SnapKV…) scale with it and still evict.
"""

from __future__ import annotations

import random

from kvfp.probes.families import plain
from kvfp.probes.layout import BuildContext, Built

FAMILY = "short"
GENERATION_ROOM = 64  # tokens a continuation may add before the smallest window starts to evict
# The catalogue's smallest fixed window is duo-0.5's streaming heads: 4 sinks + 252 recent = 256.
MAX_TOKENS = 256 - GENERATION_ROOM


def build(ctx: BuildContext, n_tokens: int, rng: random.Random) -> Built:
    """Plain corpus text of ``n_tokens`` ≤ :data:`MAX_TOKENS` ids."""
    if n_tokens > MAX_TOKENS:
        raise ValueError(f"short probes have at most {MAX_TOKENS} tokens, not {n_tokens}")
    built = plain.build(ctx, n_tokens, rng)
    built.params.update(max_tokens=MAX_TOKENS, generation_room=GENERATION_ROOM)
    return built
