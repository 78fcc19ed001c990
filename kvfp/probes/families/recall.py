"""Multi-key associative recall: several facts scattered through the context, one asked for.

Scores-based eviction (H2O, SnapKV, TOVA…) keeps some keys and drops others depending on what the
model attended to; which facts survive, and how the asked one's logits move, is the signal.
"""

from __future__ import annotations

import random

from kvfp.probes.families import values
from kvfp.probes.layout import BuildContext, Built, depth_target

FAMILY = "recall"
SPREAD = (0.05, 0.85)  # facts are planted within this fraction of the context


def default_keys(n_tokens: int) -> int:
    return 4 if n_tokens < 2048 else 8


def build(ctx: BuildContext, n_tokens: int, rng: random.Random, n_keys: int | None = None) -> Built:
    """``n_keys`` lines ``KEY_i = "value_i"`` at random depths in ``SPREAD``; the last line asks one.

    Spans: ``key0``… (each value's ids, in the order planted), ``target`` (the asked value's ids),
    ``question``. ``answer_ids`` are the asked value's ids; ``params["target"]`` its index.
    """
    n_keys = n_keys or default_keys(n_tokens)
    if n_keys < 2:
        raise ValueError("recall needs at least 2 keys")
    keys = values.constant_names(rng, n_keys)
    vals = [values.value(rng) for _ in keys]
    depths = sorted(rng.uniform(*SPREAD) for _ in keys)
    target = rng.randrange(n_keys)
    lines = [(depth_target(n_tokens, d), values.assignment(ctx, k, v, f"key{i}"))
             for i, (k, v, d) in enumerate(zip(keys, vals, depths))]
    ids, spans, info = ctx.compose(n_tokens, lines, values.question(ctx, keys[target]), rng)
    spans["target"] = list(spans[f"key{target}"])
    params = {"n_keys": n_keys, "keys": keys, "values": vals, "target": target,
              "depths": [round(spans[f"key{i}"][0] / n_tokens, 4) for i in range(n_keys)], **info}
    return Built(ids, spans, ids[slice(*spans["target"])], params)
