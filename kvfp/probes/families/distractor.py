"""Distractors: a dense block of near-identical facts, one of them asked for.

Quantization noise and merging blur near-identical keys into each other; the margin between the
asked value and its look-alikes is where that shows, even when nothing is evicted.
"""

from __future__ import annotations

import random

from kvfp.probes.families import values
from kvfp.probes.layout import BuildContext, Built, depth_target

FAMILY = "distractor"
KEY_STEM = "SESSION_KEY_"
SHARED_PREFIX = 4  # leading characters every value in the block shares


def default_lines(n_tokens: int) -> int:
    return min(max(n_tokens // 64, 8), 48)


def build(ctx: BuildContext, n_tokens: int, rng: random.Random, n_lines: int | None = None,
          depth: float | None = None) -> Built:
    """A block of ``n_lines`` lines ``SESSION_KEY_dddd = "pppp…"`` at ``depth``; the last line asks one.

    Each key is one edit (a digit changed, two swapped) from another key in the block; values share their first
    ``SHARED_PREFIX`` characters. Spans: ``block`` (every line), ``target_line``, ``target`` (the asked
    value's ids), ``question``; ``answer_ids`` are the asked value's ids.
    """
    n_lines = n_lines or default_lines(n_tokens)
    depth = rng.uniform(0.2, 0.5) if depth is None else depth
    keys = _near_keys(rng, n_lines)
    stem = values.value(rng, SHARED_PREFIX)
    vals = [stem + v for v in _distinct_values(rng, n_lines)]
    target = rng.randrange(n_lines)
    parts: list = []
    for i, (k, v) in enumerate(zip(keys, vals)):
        # Every line is tokenized in the same three parts, so the target's ids look like its neighbours'.
        mark = i == target
        parts += [(f'\n{k} = "', "target_start" if mark else None), (v, "target" if mark else None),
                  ('"', "target_end" if mark else None)]
    parts.append("\n")
    block = ctx.piece(*parts, name="block")
    ids, spans, info = ctx.compose(n_tokens, [(depth_target(n_tokens, depth), block)],
                                   values.question(ctx, keys[target]), rng)
    spans["target_line"] = [spans.pop("target_start")[0], spans.pop("target_end")[1]]
    params = {"n_lines": n_lines, "depth": round(depth, 4), "keys": keys, "values": vals, "target": target, **info}
    return Built(ids, spans, ids[slice(*spans["target"])], params)


def _near_keys(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct four-digit keys, each one edit (a digit changed or two swapped) from an earlier one."""
    first = f"{rng.randrange(1000, 10000)}"
    seen, out = {first}, [first]
    while len(out) < k:
        d = list(rng.choice(out))
        i, j = rng.sample(range(4), 2)
        if rng.random() < 0.5:
            d[i], d[j] = d[j], d[i]
        else:
            d[i] = rng.choice("0123456789")
        cand = "".join(d)
        if cand not in seen and cand[0] != "0":
            seen.add(cand)
            out.append(cand)
    rng.shuffle(out)
    return [KEY_STEM + s for s in out]


def _distinct_values(rng: random.Random, k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        v = values.value(rng, 4)
        if v not in out:
            out.append(v)
    return out
