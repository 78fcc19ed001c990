"""A small built-in prompt set: held-out (probe-split) stdlib text cut at exact token lengths.

Model-agnostic (the model's own tokenizer cuts the text) and deterministic. The full probe
generator (needles, copy spans, outliers…) builds on the same ``Prompt`` record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kvfp.models.corpus import probe_text
from kvfp.probes.filler import prefix_ids

BUILTIN_LENGTHS = (256, 640, 1024, 1536)


@dataclass
class Prompt:
    id: str
    family: str
    seed: int
    n_tokens: int
    ids: list[int]

    def meta(self) -> dict:
        d = asdict(self)
        del d["ids"]
        return d


def builtin_prompts(tokenizer, lengths=BUILTIN_LENGTHS, seed: int = 0) -> list[Prompt]:
    """One prompt per length, each from a different region of the held-out text.

    ``n_tokens`` counts every id the model sees, BOS included where the tokenizer adds one (and
    only there: SmolLM2's tokenizer defines a BOS token but puts none before a text).
    """
    need = sum(lengths) + 64 * len(lengths)
    ids = tokenizer(probe_text(max_chars=need * 8), add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < need:
        raise ValueError("held-out text is too short for the built-in prompts")
    prefix = prefix_ids(tokenizer)
    prompts, offset = [], 0
    for i, n in enumerate(lengths):
        body = ids[offset + seed: offset + seed + n - len(prefix)]
        prompts.append(Prompt(id=f"builtin-{i}", family="plain", seed=seed, n_tokens=n, ids=prefix + body))
        offset += n + 64
    return prompts
