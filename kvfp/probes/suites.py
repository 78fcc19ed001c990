"""Probe suites: which families, variants and lengths make up ``default`` and ``quick``."""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from kvfp.errors import KvfpError, UnknownNameError
from kvfp.probes.families import FAMILIES
from kvfp.probes.filler import Filler
from kvfp.probes.identity import tokenizer_hash
from kvfp.probes.layout import BuildContext
from kvfp.probes.probe import Probe, ProbeSuite

GENERATOR_VERSION = 1  # bump when the same arguments would build different probes
MIN_LENGTH = 256  # the long families' planted structure needs room around it
DEFAULT_LENGTH_CAP = 32768  # longer suites are asked for explicitly (--lengths)
STANDARD_LENGTHS = tuple(512 * 2 ** k for k in range(8))  # 512 … 65536


@dataclass(frozen=True)
class SuiteSpec:
    """Families with their variants (``tag → kwargs``), the lengths they are built at, and the
    ``short`` family's own lengths. ``lengths=None`` means: derived from the model's maximum."""

    variants: dict[str, dict[str, dict]]
    lengths: tuple[int, ...] | None
    short_lengths: tuple[int, ...]
    doc: str = ""


_ONE = {"": {}}
SUITES = {
    "default": SuiteSpec(
        variants={"needle": {"d10": {"depth": 0.1}, "d50": {"depth": 0.5}, "d90": {"depth": 0.9}},
                  "recall": _ONE, "copy": _ONE, "outlier": _ONE, "distractor": _ONE, "plain": _ONE},
        lengths=None, short_lengths=(128, 192),
        doc="every family at each standard length up to half the model's maximum, plus short controls"),
    "quick": SuiteSpec(
        variants={"needle": {"d50": {"depth": 0.5}}, "recall": _ONE, "copy": _ONE, "outlier": _ONE,
                  "distractor": _ONE, "plain": _ONE},
        lengths=(512,), short_lengths=(128,),
        doc="one probe per family at 512 tokens plus one short control: for tests and --quick runs"),
}


def default_lengths(model_max: int | None) -> tuple[int, ...]:
    """Standard lengths ``L`` with ``2·L ≤ model_max`` (room to generate, and within what a model
    handles well: kvfp-tiny, 4096 positions, trained on 2048), capped at :data:`DEFAULT_LENGTH_CAP`."""
    if model_max is None:
        return (512, 1024, 2048)
    out = tuple(L for L in STANDARD_LENGTHS if 2 * L <= model_max and L <= DEFAULT_LENGTH_CAP)
    if not out:
        raise KvfpError(f"the model's maximum of {model_max} positions leaves no room for a 512-token probe "
                        f"and its continuation; pass --lengths explicitly", exit_code=2)
    return out


def check_lengths(lengths, model_max: int | None, what: str = "length") -> tuple[int, ...]:
    """Validate lengths against :data:`MIN_LENGTH` and the model's maximum; sorted, deduplicated."""
    out = tuple(sorted({int(n) for n in lengths}))
    if not out:
        raise KvfpError("no probe lengths given", exit_code=2)
    for n in out:
        if n < MIN_LENGTH and what == "length":
            raise KvfpError(f"probe length {n} is below the minimum of {MIN_LENGTH} tokens (the short "
                            f"family covers shorter prompts)", exit_code=2)
        if model_max is not None and n > model_max:
            raise KvfpError(f"probe {what} {n} exceeds the model's maximum of {model_max} positions "
                            f"(max_position_embeddings)", exit_code=2)
    return out


def probe_rng(seed: int, key: str) -> random.Random:
    """An independent stream per probe: adding a probe never shifts another's draws."""
    digest = hashlib.sha256(f"kvfp-probes/{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate_suite(tokenizer, suite: str = "default", seed: int = 0, lengths=None, corpus: str | None = None,
                   model_max: int | None = None, model_name: str | None = None,
                   corpus_name: str | None = None) -> ProbeSuite:
    """Build a deterministic probe suite for one tokenizer.

    Parameters
    ----------
    tokenizer : the model's tokenizer; every probe has exactly ``n_tokens`` of its ids, BOS included
    suite : a name in :data:`SUITES`
    seed : draws filler offsets, planted values and positions; same seed, same suite
    lengths : lengths of the long families (default: the suite's, or :func:`default_lengths`)
    corpus : filler text (default: ``kvfp.models.corpus.probe_text()``, the held-out stdlib split)
    model_max : the model's maximum positions; lengths beyond it are refused
    model_name, corpus_name : recorded in the header

    Returns
    -------
    ProbeSuite
        probes in a fixed order (family, length, variant) and a header naming suite, seed, lengths,
        model, tokenizer hash, corpus and generator version.
    """
    if suite not in SUITES:
        raise UnknownNameError(f"unknown probe suite {suite!r}; choose one of {', '.join(SUITES)}")
    spec = SUITES[suite]
    if lengths is None:
        lengths = spec.lengths if spec.lengths is not None else default_lengths(model_max)
    lengths = check_lengths(lengths, model_max)
    short_lengths = check_lengths(spec.short_lengths, model_max, what="short length")
    if corpus is None:
        corpus, corpus_name = _default_corpus(), corpus_name or "kvfp-stdlib-probe-split"
    ctx = BuildContext(tokenizer, Filler(tokenizer, corpus))

    probes = []
    for family, variants in spec.variants.items():
        for n in lengths:
            probes += [_probe(ctx, family, n, tag, kw, seed) for tag, kw in variants.items()]
    probes += [_probe(ctx, "short", n, "", {}, seed) for n in short_lengths]

    header = {"suite": suite, "seed": seed, "lengths": list(lengths), "short_lengths": list(short_lengths),
              "model": model_name, "model_max": model_max, "tokenizer_hash": tokenizer_hash(tokenizer),
              "prefix_ids": ctx.prefix, "generator_version": GENERATOR_VERSION,
              "corpus": {"name": corpus_name or "custom", "chars": len(corpus),
                         "sha256": hashlib.sha256(corpus.encode()).hexdigest()},
              "families": sorted({p.family for p in probes})}
    return ProbeSuite(probes=probes, header=header)


@functools.lru_cache(maxsize=1)
def _default_corpus() -> str:
    from kvfp.models.corpus import probe_text

    return probe_text()  # reads every stdlib file to find the held-out ones: once per process


def _probe(ctx: BuildContext, family: str, n: int, tag: str, kwargs: dict, seed: int) -> Probe:
    key = "-".join(x for x in (family, str(n), tag) if x)
    try:
        built = FAMILIES[family](ctx, n, probe_rng(seed, key), **kwargs)
    except ValueError as e:  # a length too short for the family's structure in this tokenizer's ids
        raise KvfpError(f"probe {key}: {e}; choose longer --lengths", exit_code=2) from None
    return Probe(id=f"{key}-s{seed}", family=family, seed=seed, n_tokens=len(built.ids), ids=built.ids,
                 spans=built.spans, answer_ids=built.answer_ids, params=built.params)
