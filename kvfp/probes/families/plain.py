"""Plain long text: held-out corpus text and nothing planted.

The reference point: how a scheme bends ordinary next-token distributions as the context grows.
"""

from __future__ import annotations

import random

from kvfp.probes.layout import BuildContext, Built

FAMILY = "plain"


def build(ctx: BuildContext, n_tokens: int, rng: random.Random) -> Built:
    """Prefix (BOS) then ``n_tokens - len(prefix)`` ids of corpus text; span ``text`` covers them."""
    ids, spans, info = ctx.compose(n_tokens, [], None, rng)
    spans["text"] = [len(ctx.prefix), n_tokens]
    return Built(ids, spans, [], info)
