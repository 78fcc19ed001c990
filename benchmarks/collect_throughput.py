"""Collection throughput on kvfp-tiny: generated tokens per second under kvfp vs plain generate.

For the same prompts and the same number of new tokens (greedy, batch size 1), each row times
what one collect unit does — ``kvfp.runner.generate`` plus building and writing its Parquet
shard — and divides by the time of plain ``model.generate`` without kvfp, measured in the same
run. Rows are interleaved over ``--repeats`` rounds and each keeps its fastest round, so load
from other processes on a shared machine affects every row alike and inflates none of them.

Targets (CPU path): none ≤ 1.1×, quantization ≤ 1.5×, eviction ≤ 2× the plain time. Collection
records prompt logprobs by default, which costs one pass of the output head over the prompt that
plain generation skips; the rows time the same work as plain generate (prompt logprobs off), and
one extra row (``none +prompt-lp``) shows what they add.

    python benchmarks/collect_throughput.py [--prompts 4] [--length 512] [--new-tokens 32] [--repeats 3]
                                            [--scheme NAME ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from kvfp.compressors import parse_scheme
from kvfp.datasets.shards import write_shard
from kvfp.models import load
from kvfp.probes import builtin_prompts
from kvfp.runner import generate

# one scheme per family of the catalogue's main kinds; targets by the gene's algorithm
DEFAULT_SCHEMES = ("none", "int8-pertoken", "int4-group32", "int4-perchannel", "kivi-2", "int4-g64-r128", "fp8-e4m3",
                   "fp4-e2m1-b16", "kvquant-3", "window-512", "streaming-s4-w508", "h2o-0.1-0.1", "snapkv-0.5",
                   "tova-0.5", "quest-b16-0.25", "svd-r16", "mla-48", "merge-0.5", "window-512+int4-pertoken")
TARGETS = {"none": 1.1, "quantization": 1.5, "eviction": 2.0}


def plain(model, prompts, new_tokens):
    pad = model.config.pad_token_id
    for p in prompts:
        ids = torch.tensor([p])
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)


def unit(model, scheme, prompts, new_tokens, folder: Path, prompt_logprobs: bool):
    traces = generate(model, scheme, prompts, new_tokens, topk=20, prompt_logprobs=prompt_logprobs)
    path = folder / f"{scheme.name}-{time.perf_counter_ns()}.parquet"
    write_shard(path, traces, [f"p{i}" for i in range(len(prompts))], scheme.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scheme", action="append", help="schemes to time (default: one per family)")
    args = ap.parse_args()

    model, tok = load("kvfp-tiny")
    prompts = [p.ids for p in builtin_prompts(tok, lengths=(args.length,) * args.prompts)]
    schemes = [parse_scheme(n) for n in (args.scheme or DEFAULT_SCHEMES)]
    rows = [("plain model.generate", None, False)] + [(s.name, s, False) for s in schemes]
    rows.insert(2 if schemes and schemes[0].name == "none" else 1, ("none +prompt-lp", parse_scheme("none"), True))
    n_tokens = args.prompts * args.new_tokens
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _, s, lp in rows[1:]:  # warm-up: calibrations and first-call costs stay out of the timings
            unit(model, s, prompts[:1], 2, folder, lp)
        plain(model, prompts[:1], 2)
        for _ in range(args.repeats):
            for name, s, lp in rows:
                t0 = time.perf_counter()
                if s is None:
                    plain(model, prompts, args.new_tokens)
                else:
                    unit(model, s, prompts, args.new_tokens, folder, lp)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)

    base = best["plain model.generate"]
    print(f"kvfp-tiny on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; {args.prompts} prompts × {args.length} "
          f"tokens, {args.new_tokens} new tokens each, batch 1, best of {args.repeats}")
    print(f"{'scheme':28s} {'algorithm':13s} {'tok/s':>8s} {'× plain':>8s} {'target':>7s}  verdict")
    missed = []
    for name, s, lp in rows:
        t = best[name]
        algo = "—" if s is None else s.gene.algorithm
        target = None if s is None or lp else TARGETS.get(algo)  # the prompt-lp row is information only
        ratio = t / base
        verdict = "" if target is None else ("ok" if ratio <= target else f"MISSED by {ratio / target - 1:.0%}")
        if target is not None and ratio > target:
            missed.append(name)
        tgt = "" if target is None else f"≤{target:.1f}"
        print(f"{name:28s} {algo:13s} {n_tokens / t:8.1f} {ratio:8.2f} {tgt:>7s}  {verdict}")
    print(f"{len(missed)} target(s) missed" + (f": {', '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    main()
