"""What `kvfp train` and `kvfp identify` cost in replays, shared (today's default) against unshared.

    python benchmarks/replay_cost.py [--model kvfp-tiny] [--baseline-probes 1] [--device cpu]

The data are `kvfp evaluate --quick`'s: the quick suite (7 probes) at seed 0 for training, every
catalogue scheme collected twice (float32/eager/batch 1 and bfloat16/sdpa/batch 4), and the quick
suite at seed 1 under bfloat16/sdpa/batch 4 held out. Collection is cached in the work folder and
not timed. Then, each from an empty replay cache:

* **train** on the full catalogue (every catalogue scheme a candidate) with the shared path;
* the **unshared path** (`ReferenceRunner(share=False, batch_size=8)`: the path before sharing) on
  the observations of the first ``--baseline-probes`` train probes, its time extrapolated to the
  whole training set in proportion to the tokens of the distinct sequences replayed (labelled as
  such; ``--baseline-probes 7`` measures the whole set);
* the **accuracy** on the held-out observations of those probes with features from either path (the
  same classifier), and on every held-out observation with the shared path;
* **identify** of a 7-probe top-20 log (one held-out scheme's responses, kvfp JSONL) against the
  full catalogue, both paths measured in full.

Ratios are of times measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: a shared machine must not spin

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvfp.collect import collect  # noqa: E402
from kvfp.compressors import canonical_names  # noqa: E402
from kvfp.fingerprint.evaluation.protocol import Protocol, collect_specs  # noqa: E402
from kvfp.fingerprint.features.extract import feature_matrix  # noqa: E402
from kvfp.fingerprint.identify import identify_log  # noqa: E402
from kvfp.fingerprint.persist import save_fingerprinter  # noqa: E402
from kvfp.fingerprint.reference import REFERENCE, ReferenceRunner  # noqa: E402
from kvfp.fingerprint.training import LabelledObservations, fit_fingerprinter, load_labelled  # noqa: E402
from kvfp.models import load  # noqa: E402
from kvfp.probes import generate_suite, write_suite  # noqa: E402

TIERS = ["logits", "topk-20"]


def _suites(work: Path, model, tok):
    for name, seed in (("probes-train.jsonl", 0), ("probes-test.jsonl", 1)):
        if not (work / name).exists():
            write_suite(work / name, generate_suite(tok, "quick", seed=seed,
                                                    model_max=getattr(model.config, "max_position_embeddings", None)))


def _collect(work: Path, model_name: str) -> None:
    protocol = Protocol.standard(model_name, quick=True, candidates="all")
    for name, spec in collect_specs(protocol, work, list(canonical_names()), threads=None).items():
        t = time.perf_counter()
        collect(spec, show_progress=False, summary=False)
        print(f"collect {name}: {time.perf_counter() - t:.1f} s", flush=True)


def _subset(data: LabelledObservations, probes: set[str]) -> LabelledObservations:
    keep = [i for i, g in enumerate(data.groups) if g in probes]
    return LabelledObservations([data.observations[i] for i in keep], [data.labels[i] for i in keep],
                                [data.groups[i] for i in keep], data.probes, data.manifests)


def _tokens(observations) -> int:
    """Tokens of the distinct token sequences: what replay cost grows with."""
    seen = {(tuple(o.prompt_ids), tuple(o.output_ids)) for o in observations}
    return sum(len(p) + len(o) for p, o in seen)


def _runner(model, work: Path, name: str, share: bool) -> ReferenceRunner:
    cache = work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache: every replay is computed
    kwargs = {"share": True} if share else {"share": False, "batch_size": 8}
    return ReferenceRunner(model, list(canonical_names()), cache_dir=cache, **kwargs)


def _accuracy(trained, X: np.ndarray, labels, tier: str) -> float:
    pred = [i.verdict for i in trained.identify(X, tier)]
    return float(np.mean([p == y for p, y in zip(pred, labels)]))


def _identify_only(args, work: Path, model, env: dict) -> None:
    """identify's replays and features for one held-out scheme's 7 responses, cold, per path."""
    from dataclasses import replace

    protocol = Protocol.standard(args.model, quick=True, candidates="all")
    spec = collect_specs(protocol, work, [args.identify_scheme], threads=None)["test-nuisance"]
    spec = replace(spec, out=work / f"test-{args.identify_scheme}")
    collect(spec, show_progress=False, summary=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load_labelled([spec.out])
    out = {"env": env, "observations": len(test), "candidates": len(canonical_names()), "identify_replays": {}}
    for name, share in (("shared", True), ("unshared", False)):
        if not share and args.skip_unshared:
            continue
        runner = _runner(model, work, f"identify-only-{name}", share)
        t = time.perf_counter()
        feature_matrix(test.observations, runner, ["topk-20"], test.probes)
        out["identify_replays"][name] = time.perf_counter() - t
        print(f"identify's replays and topk-20 features, {len(test)} responses x {len(canonical_names())} "
              f"candidates ({name}): {out['identify_replays'][name]:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kvfp-tiny")
    ap.add_argument("--work", type=Path, default=None, help="default runs/replay-cost-<model>")
    ap.add_argument("--baseline-probes", type=int, default=1, help="train/test probes the unshared path replays")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--identify-scheme", default="kivi-2", help="the held-out scheme whose log is identified")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--identify-only", action="store_true",
                    help="collect only the held-out scheme's 7 responses and time identify's replays and "
                         "features against the full catalogue (no classifier: training it is the cost skipped)")
    ap.add_argument("--skip-unshared", action="store_true", help="with --identify-only: the shared path only")
    args = ap.parse_args()
    work = args.work or ROOT / "runs" / f"replay-cost-{args.model}"
    work.mkdir(parents=True, exist_ok=True)
    model, tok = load(args.model, dtype=REFERENCE[1], attn=REFERENCE[2], device=args.device)
    # data are collected at torch's default thread count (a dataset records it); timings run at --threads
    env = {"model": args.model, "device": args.device, "torch_threads": args.threads or torch.get_num_threads(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
           "cpu_count": os.cpu_count()}
    print(json.dumps(env), flush=True)

    _suites(work, model, tok)
    if args.identify_only:
        _identify_only(args, work, model, env)
        return
    _collect(work, args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_labelled([work / "train-reference", work / "train-nuisance"])
    test = load_labelled([work / "test-nuisance"])
    base_train_probes = set(list(dict.fromkeys(train.groups))[:args.baseline_probes])
    base_test_probes = set(list(dict.fromkeys(test.groups))[:args.baseline_probes])
    out: dict = {"env": env, "train_observations": len(train), "test_observations": len(test),
                 "candidates": len(canonical_names())}
    print(f"{len(train)} train / {len(test)} test observations, {len(canonical_names())} candidates", flush=True)

    # -- train, shared path, full catalogue ----------------------------------------------------
    marks = {}
    runner = _runner(model, work, "shared", True)
    runner.progress = lambda done, total: marks.__setitem__("replayed", time.perf_counter()) if done == total else None
    t = time.perf_counter()
    trained, _ = fit_fingerprinter(train, model, tok, tiers=TIERS, runner=runner,
                                   log=lambda m: marks.setdefault("fit", time.perf_counter()) if m.startswith("fitting")
                                   else None)
    out["train_shared_s"] = time.perf_counter() - t
    out["train_shared_phases_s"] = {"replays": marks["replayed"] - t, "features": marks["fit"] - marks["replayed"],
                                    "fit": t + out["train_shared_s"] - marks["fit"]}
    out["prefills_computed"] = {w: s.computed for w, s in runner._prefills.items()}
    print(f"train, shared path: {out['train_shared_s']:.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in out['train_shared_phases_s'].items())})", flush=True)
    clf = work / "classifier-shared"
    shutil.rmtree(clf, ignore_errors=True)
    save_fingerprinter(clf, trained)

    t = time.perf_counter()
    X_test = feature_matrix(test.observations, runner, TIERS, test.probes)
    out["test_features_shared_s"] = time.perf_counter() - t
    out["accuracy_all_test_shared"] = {tier: _accuracy(trained, X_test[tier], test.labels, tier) for tier in TIERS}
    print(f"held-out accuracy, all {len(test)} observations: {out['accuracy_all_test_shared']}", flush=True)

    # -- the unshared path on the baseline probes -----------------------------------------------
    sub_train = _subset(train, base_train_probes)
    sub_test = _subset(test, base_test_probes)
    base = _runner(model, work, "unshared", False)
    t = time.perf_counter()
    X_sub_base = feature_matrix(sub_train.observations, base, TIERS, train.probes)
    base_s = time.perf_counter() - t
    scale = _tokens(train.observations) / _tokens(sub_train.observations)
    out["train_unshared"] = {"probes": sorted(base_train_probes), "observations": len(sub_train),
                             "measured_s": base_s, "token_scale": scale, "extrapolated_s": base_s * scale,
                             "extrapolated": args.baseline_probes < len(set(train.groups))}
    # the shared path on the same rows, timed from its own cold cache, for a like-for-like ratio
    same = _runner(model, work, "shared-subset", True)
    t = time.perf_counter()
    X_sub_shared = feature_matrix(sub_train.observations, same, TIERS, train.probes)
    out["train_subset_shared_s"] = time.perf_counter() - t
    out["train_subset_max_feature_diff"] = {tier: float(np.max(np.abs(X_sub_base[tier] - X_sub_shared[tier])))
                                            for tier in TIERS}
    print(f"train features on {len(sub_train)} observations of {sorted(base_train_probes)}: unshared {base_s:.1f} s, "
          f"shared {out['train_subset_shared_s']:.1f} s", flush=True)

    Xb = feature_matrix(sub_test.observations, base, TIERS, test.probes)
    Xs = feature_matrix(sub_test.observations, runner, TIERS, test.probes)
    out["accuracy_subset_test"] = {tier: {"unshared": _accuracy(trained, Xb[tier], sub_test.labels, tier),
                                          "shared": _accuracy(trained, Xs[tier], sub_test.labels, tier),
                                          "observations": len(sub_test)} for tier in TIERS}
    print(f"held-out accuracy on {len(sub_test)} observations, features by either path: "
          f"{out['accuracy_subset_test']}", flush=True)

    # -- identify a 7-probe top-20 log ---------------------------------------------------------
    from kvfp.datasets.dataset import open_dataset
    from kvfp.datasets.export import export_dataset

    log = work / f"identify-{args.identify_scheme}.jsonl"
    if not log.exists():
        export_dataset(open_dataset(work / "test-nuisance"), "kvfp-jsonl", log, schemes=[args.identify_scheme])
    out["identify"] = {}
    for name, share in (("shared", True), ("unshared", False)):
        cache = work / f"cache-identify-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        opts = {"cache_dir": cache, "share": share, **({} if share else {"batch_size": 8})}
        t = time.perf_counter()
        report = identify_log(log, args.model, clf, tier="topk-20", probes=work / "probes-test.jsonl",
                              device=args.device, runner_options=opts)
        out["identify"][name] = {"s": time.perf_counter() - t, "verdict": report.pooled["verdict"]}
        print(f"identify ({name}): {out['identify'][name]['s']:.1f} s, verdict {report.pooled['verdict']}", flush=True)

    tu = out["train_unshared"]
    fit_s = out["train_shared_phases_s"]["fit"]
    print("\n== summary ==")
    print(f"model {args.model} on {args.device}, {env['torch_threads']} torch threads, "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    shared_rf = out["train_shared_s"] - fit_s
    print(f"train, full catalogue ({len(train)} observations, {out['candidates']} candidates): shared "
          f"{out['train_shared_s']:.1f} s ({shared_rf:.1f} s replays and features, {fit_s:.1f} s fit)")
    print(f"  replays and features, unshared: {tu['measured_s']:.1f} s on {tu['observations']} observations"
          + (f", x{tu['token_scale']:.2f} = {tu['extrapolated_s']:.1f} s extrapolated" if tu["extrapolated"] else "")
          + f"; ratio to shared {tu['extrapolated_s'] / shared_rf:.1f}x; whole train with the same fit "
          f"{tu['extrapolated_s'] + fit_s:.1f} s vs {out['train_shared_s']:.1f} s, "
          f"{(tu['extrapolated_s'] + fit_s) / out['train_shared_s']:.1f}x")
    print(f"same {tu['observations']} observations, both measured: unshared {tu['measured_s']:.1f} s, shared "
          f"{out['train_subset_shared_s']:.1f} s, ratio {tu['measured_s'] / out['train_subset_shared_s']:.1f}x; "
          f"max feature difference {out['train_subset_max_feature_diff']}")
    i = out["identify"]
    print(f"identify, 7-probe top-20 log: shared {i['shared']['s']:.1f} s, unshared {i['unshared']['s']:.1f} s, "
          f"ratio {i['unshared']['s'] / i['shared']['s']:.1f}x")
    print(f"held-out accuracy (all {len(test)}, shared): {out['accuracy_all_test_shared']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
