"""Needle: one fact planted at a depth, asked for at the end.

Eviction that drops the needle's tokens (windows, attention-score budgets that never looked at it)
changes the answer's logits far more than quantization does; the depth says how old the fact is.
"""

from __future__ import annotations

import random

from kvfp.probes.families import values
from kvfp.probes.layout import BuildContext, Built, depth_target

FAMILY = "needle"


def build(ctx: BuildContext, n_tokens: int, rng: random.Random, depth: float = 0.5) -> Built:
    """``KEY = "value"`` planted ``depth`` of the way in; the last line opens ``KEY = "``.

    Spans: ``needle`` (the value's ids), ``needle_line`` (the whole planted line), ``question``.
    ``answer_ids`` are the value's ids.
    """
    if not 0.0 <= depth < 1.0:
        raise ValueError(f"needle depth must be in [0, 1), not {depth}")
    key = values.constant_names(rng, 1)[0]
    val = values.value(rng)
    line = values.assignment(ctx, key, val, "needle", name="needle_line")
    ids, spans, info = ctx.compose(n_tokens, [(depth_target(n_tokens, depth), line)], values.question(ctx, key), rng)
    answer = ids[slice(*spans["needle"])]
    params = {"depth": depth, "key": key, "value": val,
              "distance": spans["question"][1] - spans["needle"][0], **info}
    return Built(ids, spans, answer, params)
