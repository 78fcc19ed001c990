"""Outliers: spans of rare tokens, long digit strings and unusual characters inside plain text.

Such tokens produce keys and values far from the bulk: per-tensor and per-channel scales, clipping
and outlier-keeping schemes (KVQuant, dense-and-sparse) treat them visibly differently.
"""

from __future__ import annotations

import random

from kvfp.probes.layout import BuildContext, Built, depth_target

FAMILY = "outlier"
KINDS = ("digits", "unicode", "rare")
SLOTS = (0.2, 0.5, 0.8)  # depths the kinds are dealt to, in a seeded order
# Code points from blocks a code corpus rarely uses: CJK, Greek/math, box drawing, emoji, combining marks.
_UNICODE_RANGES = ((0x4E00, 0x4FFF), (0x0391, 0x03C9), (0x2200, 0x22FF), (0x2500, 0x257F),
                   (0x1F300, 0x1F5FF), (0x0300, 0x036F), (0x0E00, 0x0E5B))


def build(ctx: BuildContext, n_tokens: int, rng: random.Random, digits: int = 48, chars: int = 24,
          rare: int = 16) -> Built:
    """One line of each kind in :data:`KINDS`, dealt to the depths in :data:`SLOTS`.

    Spans: ``digits`` (a ``digits``-long random number), ``unicode`` (``chars`` characters from
    rarely used blocks), ``rare`` (``rare`` ids the corpus uses least, inserted as ids).
    """
    number = str(rng.randrange(1, 10)) + "".join(rng.choice("0123456789") for _ in range(digits - 1))
    odd = "".join(chr(rng.randint(*rng.choice(_UNICODE_RANGES))) for _ in range(chars))
    rare_ids = ctx.filler.rare_ids(rare, rng)
    pieces = {"digits": ctx.piece("\n", (number, "digits"), "\n"),
              "unicode": ctx.piece("\n# ", (odd, "unicode"), "\n"),
              "rare": ctx.piece("\n# ", (rare_ids, "rare"), "\n")}
    order = rng.sample(KINDS, len(KINDS))
    planted = [(depth_target(n_tokens, d), pieces[k]) for d, k in zip(SLOTS, order)]
    ids, spans, info = ctx.compose(n_tokens, planted, None, rng)
    params = {"depths": {k: d for d, k in zip(SLOTS, order)}, "digits": number, "unicode": odd,
              "rare_ids": rare_ids, **info}
    return Built(ids, spans, [], params)
