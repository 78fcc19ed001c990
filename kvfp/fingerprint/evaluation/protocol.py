"""The fingerprinting benchmark: what ``kvfp evaluate`` collects, trains and measures.

Protocol
--------
* **Train side** — probe suite seed 0 (``quick`` suite with ``--quick``, else ``default``):
  every scheme of the catalogue at the reference settings (float32, eager attention, batch 1),
  plus every scheme served with nuisance (bfloat16, sdpa, batch 4) on the same probes, which
  teaches the classifier what benign serving differences look like; trained on kvfp's exact
  traces alone it keyed on the right candidate fitting perfectly (benchmarks/RESULTS.md).
* **Test side** — suite seed 1 (other prompts: probe ids and contents differ from the train
  side's): every scheme served with nuisance (bfloat16, sdpa, batch 4), while the reference
  replays stay float32/eager. A test observation is thus never one kvfp's own numerics produced.
* Collection keeps full logits, top-20 log-probabilities and prompt log-probabilities;
  ``--quick`` generates 16 tokens per probe, the full protocol 32.
* Features at every tier the data supports (logits, topk-20, topk-5, prompt, tokens) against the
  candidate schemes (default: every evaluated scheme, so each class has its own replay; ``all``:
  the catalogue; or names); one :class:`~kvfp.fingerprint.estimators.Fingerprinter`
  per tier fitted on the train side, grouped by probe.
* Figures per tier, on the test side: top-1 scheme accuracy (closed set; also counting a
  prediction right when its replay equals the true scheme's on that observation, see
  :mod:`~kvfp.fingerprint.evaluation.lookalike`), the same per endpoint (each served scheme's
  test observations pooled into one verdict, as ``kvfp identify`` pools a log), algorithm-gene
  accuracy, macro-F1, the false-alarm rate of uncompressed (``none``) test observations,
  leave-one-scheme-out open-set AUROC (the held-out scheme's training rows *and* the feature
  columns simulating it removed; novelty of its test rows against the other schemes' test rows),
  and the scored tokens needed to tell ``fp8-e4m3`` from ``none`` at AUROC 0.99: observations
  cut to their first ``t`` steps (a prefix replay is the prefix of a replay), scored by
  ``log P(fp8-e4m3) − log P(none)``, pooled ``m`` at a time by a seeded bootstrap.

The work folder (``evaluate.json``, the two suite files, three dataset folders) is reused by a
later run of the same configuration: collection resumes where it stopped and replays come from
the replay cache (``$KVFP_CACHE/replays``), so a rerun only recomputes features and figures. A
folder of another configuration (model weights, suites, schemes, tokens…) is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from kvfp.errors import KvfpError

REFERENCE_SERVING = {"dtype": "float32", "attn": "eager", "batch_size": 1}
NUISANCE_SERVING = {"dtype": "bfloat16", "attn": "sdpa", "batch_size": 4}
# --quick holds out one scheme per family (a candidate among them: its columns go too) to bound time
QUICK_HELD_OUT = ("int4-group32", "fp8-e5m2", "tova-0.5", "snapkv-0.5", "svd-r16", "merge-0.5",
                  "window-512+int4-pertoken")
POOLS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
CONFIG, KIND, FORMAT = "evaluate.json", "kvfp-evaluate", 1
TRAIN_SUITE, TEST_SUITE = "probes-train.jsonl", "probes-test.jsonl"
DATASETS = {"train-reference": ("train", REFERENCE_SERVING), "train-nuisance": ("train", NUISANCE_SERVING),
            "test-nuisance": ("test", NUISANCE_SERVING)}


@dataclass(frozen=True)
class Protocol:
    """One configuration of the benchmark (see the module docstring).

    Attributes
    ----------
    model : model name or folder (``kvfp-tiny``)
    mode : ``quick``, ``full`` or anything else for a hand-made protocol (tests)
    train_probes, test_probes : a suite name (generated with ``train_seed`` / ``test_seed``) or a
        suite file
    schemes : schemes served on both sides (``all``: the canonical catalogue)
    candidates : schemes simulated per observation (``("default",)``: the evaluated schemes;
        ``("all",)``: the catalogue)
    held_out : schemes held out in turn for the open-set AUROC (``None``: every compressed scheme)
    pair : the schemes the tokens-needed figure tells apart
    steps : observation lengths ``t`` tried for that figure (``None``: 1, 2, 4, … up to new_tokens)
    pools : pool sizes ``m`` tried; ``n_boot`` bootstrap draws per class and point; ``seed`` their seed
    threads : torch CPU threads of the collection (recorded in the datasets; ``None``: torch's default)
    """

    model: str
    mode: str = "full"
    train_probes: str = "default"
    test_probes: str = "default"
    train_seed: int = 0
    test_seed: int = 1
    schemes: tuple[str, ...] = ("all",)
    new_tokens: int = 32
    topk: int = 20
    candidates: tuple[str, ...] = ("default",)
    held_out: tuple[str, ...] | None = None
    pair: tuple[str, str] = ("fp8-e4m3", "none")
    steps: tuple[int, ...] | None = None
    pools: tuple[int, ...] = POOLS
    n_boot: int = 2000
    seed: int = 0
    shard_size: int = 4
    threads: int | None = None

    @classmethod
    def standard(cls, model: str, quick: bool = False, candidates: str | tuple[str, ...] | None = None) -> Protocol:
        """The protocol of ``kvfp evaluate`` (``candidates``: ``None``/``"default"``, ``"all"`` or names)."""
        suite = "quick" if quick else "default"
        return cls(model=model, mode=suite if quick else "full", train_probes=suite, test_probes=suite,
                   new_tokens=16 if quick else 32, candidates=parse_candidates(candidates),
                   held_out=QUICK_HELD_OUT if quick else None)

    def steps_tried(self) -> list[int]:
        if self.steps is not None:
            return sorted({min(int(t), self.new_tokens) for t in self.steps if int(t) >= 1})
        out, t = [], 1
        while t < self.new_tokens:
            out.append(t)
            t *= 2
        return out + [self.new_tokens]


def parse_candidates(value, schemes=None) -> tuple[str, ...]:
    """``None``/``"default"`` → ``schemes`` (the evaluated schemes; ``("default",)`` while they are
    not known yet); ``"all"`` → the catalogue; else names (a tuple, or one comma-separated string)."""
    from kvfp.compressors import canonical_names, parse_scheme

    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value or ["default"])
    names = [n for n in names if n]
    if names == ["default"]:
        return tuple(schemes) if schemes is not None else ("default",)
    if names == ["all"]:
        return tuple(canonical_names())
    if not names:
        raise KvfpError("--candidates is empty; use default, all or scheme names", exit_code=2)
    return tuple(parse_scheme(n).name for n in names)


# -- the work folder --------------------------------------------------------------------------


def _suite(spec: str, seed: int, tok, model, model_name: str):
    from kvfp.probes import SUITES, generate_suite, read_suite

    if spec in SUITES:
        return generate_suite(tok, spec, seed=seed, model_max=getattr(model.config, "max_position_embeddings", None),
                              model_name=model_name)
    if Path(spec).is_file():
        return read_suite(spec)
    raise KvfpError(f"probe suite {spec!r} is neither a suite name ({', '.join(SUITES)}) nor a file", exit_code=2)


def identity(protocol: Protocol, *, weights_hash: str, tokenizer_hash: str, train_suite, test_suite,
             schemes: list[str]) -> dict:
    """What the collected data depend on: a work folder serves only runs that agree on all of it."""
    return {"model": protocol.model, "weights_hash": weights_hash, "tokenizer_hash": tokenizer_hash,
            "mode": protocol.mode, "train_suite_hash": train_suite.hash, "test_suite_hash": test_suite.hash,
            "schemes": schemes, "new_tokens": protocol.new_tokens, "topk": protocol.topk,
            "reference_serving": REFERENCE_SERVING, "nuisance_serving": NUISANCE_SERVING,
            "shard_size": protocol.shard_size}


def prepare_work(work: Path, ident: dict, threads: int | None) -> dict:
    """Create ``work`` with its ``evaluate.json``, or rejoin it when it holds the same configuration.

    Returns the stored configuration (its ``threads`` wins over ``threads``: the datasets in the
    folder were collected with it and only resume at the same count).
    """
    from kvfp.datasets.atomic import TMP_PREFIX, publish_text

    work = Path(work)
    if work.exists() and not work.is_dir():
        raise KvfpError(f"--work {work} is a file; name a folder", exit_code=2)
    cfg_path = work / CONFIG
    if work.is_dir() and not cfg_path.is_file() and any(not p.name.startswith(TMP_PREFIX) for p in work.iterdir()):
        raise KvfpError(f"--work {work} already exists and is not a kvfp evaluate folder (no {CONFIG}); kvfp "
                        "never overwrites output. Choose another --work.", exit_code=2)
    work.mkdir(parents=True, exist_ok=True)
    new = {"kind": KIND, "format": FORMAT, **ident, "threads": threads}
    publish_text(cfg_path, json.dumps(new, indent=2) + "\n")
    try:
        stored = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise KvfpError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(stored, dict) or stored.get("kind") != KIND:
        raise KvfpError(f"{cfg_path}: not a kvfp evaluate configuration", exit_code=2)
    diffs = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in ident.items() if stored.get(k) != v]
    if diffs:
        raise KvfpError(f"--work {work} holds an evaluation of another configuration, so it cannot be reused "
                        "(kvfp never overwrites output):\n  " + "\n  ".join(diffs) +
                        "\nChoose another --work (or rerun with the configuration it was made for).", exit_code=2)
    return stored


def _write_suite_once(path: Path, suite) -> None:
    from kvfp.probes import read_suite, write_suite

    if not path.exists():
        try:
            write_suite(path, suite)
        except KvfpError:  # another process wrote it first: checked below like any existing file
            pass
    if read_suite(path).hash != suite.hash:
        raise KvfpError(f"{path} holds another probe suite than this configuration's", exit_code=2)


def collect_specs(protocol: Protocol, work: Path, schemes: list[str], threads: int | None) -> dict:
    """``{dataset folder name: CollectSpec}`` of the three datasets (see :data:`DATASETS`)."""
    from kvfp.collect import CollectSpec

    out = {}
    for name, (side, serving) in DATASETS.items():
        suite = work / (TRAIN_SUITE if side == "train" else TEST_SUITE)
        # every scheme served with nuisance too: trained on kvfp's exact traces alone, the
        # classifier learns that the right candidate fits perfectly, which no served trace does
        names = tuple(schemes)
        out[name] = CollectSpec(model=protocol.model, schemes=names, out=work / name, probes=str(suite),
                                new_tokens=protocol.new_tokens, topk=protocol.topk, logits=True, prompt_logprobs=True,
                                dtype=serving["dtype"], attn=serving["attn"], batch_size=serving["batch_size"],
                                shard_size=protocol.shard_size, threads=threads)
    return out


# -- the run ----------------------------------------------------------------------------------


def _check_names(protocol: Protocol) -> tuple[list[str], list[str], list[str]]:
    from kvfp.collect.spec import expand_schemes
    from kvfp.compressors import parse_scheme

    schemes = [s.name for s in expand_schemes(protocol.schemes)]
    if "none" not in schemes:
        raise KvfpError("the evaluated schemes must include none (false alarms are measured on it)", exit_code=2)
    candidates = list(parse_candidates(protocol.candidates, schemes))
    if protocol.held_out is None:
        held = [s for s in schemes if s != "none"]
    else:
        held = [parse_scheme(s).name for s in protocol.held_out]
        missing = [s for s in held if s not in schemes or s == "none"]
        if missing:
            raise KvfpError(f"held-out scheme(s) {', '.join(missing)} are not compressed schemes of this "
                            "evaluation", exit_code=2)
    return schemes, candidates, held


def run(protocol: Protocol, work: Path | str, *, log=lambda msg: None) -> dict:
    """Collect (or resume), train, and measure every figure of every tier.

    Returns
    -------
    dict with ``model``, ``protocol`` (the configuration), ``counts``, ``tiers`` (per tier the
    figures of :func:`tier_figures`) and ``seconds`` per stage
    """
    from kvfp.collect import collect
    from kvfp.compressors.calibration import model_fingerprint
    from kvfp.datasets.manifest import tokenizer_hash
    from kvfp.fingerprint.reference import REFERENCE, ReferenceRunner
    from kvfp.fingerprint.training import load_labelled
    from kvfp.models import load

    t_start = time.perf_counter()
    work = Path(work)
    schemes, candidates, held = _check_names(protocol)
    model, tok = load(protocol.model, dtype=REFERENCE[1], attn=REFERENCE[2])
    train_suite = _suite(protocol.train_probes, protocol.train_seed, tok, model, protocol.model)
    test_suite = _suite(protocol.test_probes, protocol.test_seed, tok, model, protocol.model)
    overlap = {p.id for p in train_suite.probes} & {p.id for p in test_suite.probes}
    if overlap or train_suite.hash == test_suite.hash:
        raise KvfpError(f"train and test probe suites share probes ({', '.join(sorted(overlap)[:3]) or 'all'}); "
                        "the protocol needs disjoint probes (other seeds)", exit_code=2)
    ident = identity(protocol, weights_hash=model_fingerprint(model), tokenizer_hash=tokenizer_hash(tok),
                     train_suite=train_suite, test_suite=test_suite, schemes=schemes)
    threads = protocol.threads
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    cfg = prepare_work(work, ident, threads)
    _write_suite_once(work / TRAIN_SUITE, train_suite)
    _write_suite_once(work / TEST_SUITE, test_suite)
    seconds = {}

    t0 = time.perf_counter()
    specs = collect_specs(protocol, work, schemes, cfg.get("threads"))
    for name, spec in specs.items():
        log(f"collect {name}: {len(spec.schemes)} scheme(s) × {len(train_suite if 'train' in name else test_suite)} "
            f"probes, {spec.dtype}/{spec.attn}/batch {spec.batch_size}")
        res = collect(spec, summary=False, log=log)
        if res["units"]["left"]:
            raise KvfpError(f"{spec.out}: {res['units']['left']} unit(s) are held by another process; run again "
                            "once it finishes")
    seconds["collect"] = time.perf_counter() - t0

    train = load_labelled([work / "train-reference", work / "train-nuisance"])
    test = load_labelled([work / "test-nuisance"])
    tiers = [t for t in train.tiers() if t in test.tiers()]
    runner = ReferenceRunner(model, candidates)
    result = {"model": protocol.model, "weights_hash": ident["weights_hash"],
              "protocol": {**{k: v for k, v in ident.items() if k not in ("weights_hash", "tokenizer_hash")},
                           "candidates": candidates, "held_out": held, "pair": list(protocol.pair),
                           "steps": protocol.steps_tried(), "pools": list(protocol.pools), "n_boot": protocol.n_boot,
                           "train": f"suite seed {protocol.train_seed}: every scheme at {_serving(REFERENCE_SERVING)}, "
                                    f"plus every scheme at {_serving(NUISANCE_SERVING)}",
                           "test": f"suite seed {protocol.test_seed}: every scheme at {_serving(NUISANCE_SERVING)}"},
              "counts": {"train_observations": len(train), "test_observations": len(test),
                         "train_probes": len(set(train.groups)), "test_probes": len(set(test.groups)),
                         "schemes": len(schemes), "candidates": len(candidates)},
              "tiers": {}, "seconds": seconds}

    # numpy's BLAS on one thread: the classifiers fit small matrices, where OpenBLAS threads cost more in
    # synchronisation than they gain (5x slower fits on a loaded 2-core machine); torch keeps its threads
    with threadpool_limits(1, user_api="blas"):
        _train_and_measure(protocol, model, tok, runner, train, test, tiers, held, result, log)
    seconds["total"] = time.perf_counter() - t_start
    return result


def _train_and_measure(protocol: Protocol, model, tok, runner, train, test, tiers: list[str], held: list[str],
                        result: dict, log) -> None:
    """Features of both sides, one fingerprinter per tier, and every tier's figures into ``result``."""
    from kvfp.fingerprint.evaluation import lookalike
    from kvfp.fingerprint.features.extract import feature_matrix
    from kvfp.fingerprint.training import fit_fingerprinter

    seconds = result["seconds"]
    t0 = time.perf_counter()
    log(f"train features: {len(train)} observations × {len(tiers)} tiers, {len(runner.candidates)} candidates")
    trained, X_train = fit_fingerprinter(train, model, tok, tiers=tiers, runner=runner, log=log)
    seconds["train_features_and_fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"test features: {len(test)} observations")
    X_test = feature_matrix(test.observations, runner, tiers, test.probes)
    alike = lookalike.lookalikes(test.observations, test.labels, runner)  # cached replays: no model run
    result["counts"]["lookalike_observations"] = int(sum(len(s) > 1 for s in alike))
    seconds["test_features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pair_obs = _pair_observations(test, protocol.pair)
    short = _truncated_features(pair_obs, runner, tiers, test.probes, protocol.steps_tried(), log) if pair_obs else {}
    seconds["truncated_features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for tier in tiers:
        log(f"figures at {tier}")
        result["tiers"][tier] = tier_figures(trained.tiers[tier], trained.feature_names[tier], X_train[tier],
                                             train, X_test[tier], test, held, protocol, tier,
                                             short.get(tier), pair_obs, alike)
    seconds["figures"] = time.perf_counter() - t0


def _serving(s: dict) -> str:
    return f"{s['dtype']}/{s['attn']}/batch {s['batch_size']}"


def _pair_observations(test, pair: tuple[str, str]) -> dict | None:
    """``{label: [observations]}`` of the two schemes of the tokens-needed figure (``None`` if absent)."""
    out = {lab: [o for o, y in zip(test.observations, test.labels) if y == lab] for lab in pair}
    return out if all(out.values()) else None


def _truncated_features(pair_obs: dict, runner, tiers, probes, steps, log) -> dict:
    """``{tier: {t: {label: (n, d) features}}}`` of the pair's observations cut to ``t`` steps."""
    from kvfp.fingerprint.evaluation.truncate import truncate_observation, truncate_reference
    from kvfp.fingerprint.features.extract import features

    log(f"truncated features: {sum(map(len, pair_obs.values()))} observations × {len(steps)} lengths")
    out = {tier: {t: {} for t in steps} for tier in tiers}
    for lab, obs in pair_obs.items():
        rows = {tier: {t: [] for t in steps} for tier in tiers}
        for o, ref in zip(obs, runner.references(obs)):  # cached replays: no model run
            probe = (probes or {}).get(o.probe_id)
            for t in steps:
                ot, rt = truncate_observation(o, t), truncate_reference(ref, t)
                for tier in tiers:
                    rows[tier][t].append(features(ot, rt, tier, probe))
        for tier in tiers:
            for t in steps:
                out[tier][t][lab] = np.stack(rows[tier][t])
    return out


def scored_tokens(obs, tier: str, t: int) -> int:
    """Tokens whose scores an endpoint of ``tier`` returns for ``obs`` cut to ``t`` steps: the
    generated ones, plus the prompt's (all but the first) at the prompt tier."""
    n = min(t, obs.steps)
    return n + (len(obs.prompt_ids) - 1 if tier == "prompt" else 0)


def tier_figures(fp, names, X_train, train, X_test, test, held, protocol: Protocol, tier: str, short: dict | None,
                 pair_obs: dict | None, alike=None) -> dict:
    """Every figure of one tier (see :mod:`kvfp.fingerprint.evaluation.figures`)."""
    from kvfp.fingerprint.evaluation import figures, metrics

    out = figures.closed_set(fp, X_test, test.labels, alike=alike)
    out.update(figures.endpoints(fp, X_test, test.labels, alike))
    out["n_features"] = int(X_train.shape[1])
    osr = figures.open_set(fp.get_params(), X_train, train.labels, train.groups, X_test, test.labels, names, held)
    out["open_set_auroc"], out["open_set_auroc_per_scheme"] = osr["auroc"], osr["per_scheme"]
    out["tokens_to_separate"] = None
    if short is not None and all(p in [str(c) for c in fp.classes_] for p in protocol.pair):
        a, b = protocol.pair
        scores = {}
        for t, feats in short.items():
            per_obs = np.mean([scored_tokens(o, tier, t) for lab in (a, b) for o in pair_obs[lab]])
            scores[t] = (figures.pair_scores(fp, feats[a], protocol.pair),
                         figures.pair_scores(fp, feats[b], protocol.pair), float(per_obs))
        curve = metrics.auroc_curve(scores, protocol.pools, n_boot=protocol.n_boot, seed=protocol.seed)
        out["tokens_to_separate"] = {"pair": [a, b], **metrics.tokens_needed(curve, 0.99),
                                     "single_observation_auroc": metrics.auroc(scores[max(scores)][0],
                                                                               scores[max(scores)][1]),
                                     "curve": curve}
    return out


__all__ = ["Protocol", "run", "parse_candidates", "prepare_work", "identity", "collect_specs", "tier_figures",
           "REFERENCE_SERVING", "NUISANCE_SERVING", "QUICK_HELD_OUT"]
