"""Induction/copy: a span of text repeated far from its first occurrence, the repeat cut short.

Continuing the repeat needs the first occurrence's keys and values: a sliding window shorter than
the distance has dropped them, quantization blurs them. The cut puts the rest of the span in the
generated region, where every access tier sees it.
"""

from __future__ import annotations

import random

from kvfp.probes.layout import BuildContext, Built, depth_target

FAMILY = "copy"
LEAD = 0.05  # the first occurrence starts this far in: past attention sinks, as old as possible


def default_span(n_tokens: int) -> int:
    return min(max(n_tokens // 16, 32), 256)


def build(ctx: BuildContext, n_tokens: int, rng: random.Random, span: int | None = None,
          repeated: float = 0.5) -> Built:
    """``span`` tokens of corpus text near the start; its first ``repeated`` fraction again at the end.

    Spans: ``copy0`` (the part of the first occurrence that is repeated), ``copy0_rest`` (the part
    that is not: ``answer_ids``), ``copy1`` (the repeat, ending the prompt).
    ``params["distance"]`` is ``copy1.start - copy0.start``.
    """
    span = span or default_span(n_tokens)
    n_rep = round(span * repeated)
    if not 0 < n_rep < span:
        raise ValueError(f"copy: repeat {n_rep} of {span} tokens; both parts must be non-empty")
    text, src_offset = ctx.filler.take(span, rng)
    first = ctx.piece((text[:n_rep], "copy0"), (text[n_rep:], "copy0_rest"))
    again = ctx.piece((text[:n_rep], "copy1"))
    ids, spans, info = ctx.compose(n_tokens, [(depth_target(n_tokens, LEAD), first)], again, rng)
    params = {"span": span, "repeated": n_rep, "distance": spans["copy1"][0] - spans["copy0"][0],
              "source_offset": src_offset, **info}
    return Built(ids, spans, ids[slice(*spans["copy0_rest"])], params)
