"""``kvfp evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import JsonOpt, ModelOpt


@user_errors
def evaluate(
    model: ModelOpt,
    quick: Annotated[bool, typer.Option("--quick", help="The quick suite (7 probes per side), 16 new tokens and "
                                                        "7 held-out schemes for the open set.")] = False,
    work: Annotated[Path | None, typer.Option("--work", "-w", help="Work folder (datasets, suites); reused by a "
                                                                   "rerun of the same configuration. Default: "
                                                                   "runs/evaluate-<model>-<quick|full>.")] = None,
    candidates: Annotated[str, typer.Option("--candidates", help="Schemes simulated per observation: default "
                                                                 "(every evaluated scheme), all (the catalogue) "
                                                                 "or comma-separated names.")] = "default",
    as_json: JsonOpt = False,
) -> None:
    """Benchmark the fingerprinter: train and test on disjoint probes, test served with nuisance.

    Train side: probe suite seed 0, every catalogue scheme at the reference settings (float32,
    eager, batch 1), plus every scheme served in bfloat16 with sdpa, batch 4 (benign differences). Test
    side: suite seed 1 (other prompts), every scheme served in bfloat16 with sdpa, batch 4.
    Full logits, top-20 and prompt logprobs are collected (16 new tokens with --quick, else 32).

    Per tier (logits, topk-20, topk-5, prompt, tokens) it prints top-1 scheme accuracy,
    algorithm-gene accuracy, macro-F1, leave-one-scheme-out open-set AUROC (scheme's training
    rows and its candidate features removed), the false-alarm rate of uncompressed test
    endpoints, and the scored tokens needed to tell fp8-e4m3 from none at AUROC 0.99
    (observations cut to t steps, m pooled by a seeded bootstrap), each next to its target.

    Collection resumes and replays are cached ($KVFP_CACHE/replays), so rerunning in the same
    --work folder only recomputes features and figures. Progress goes to stderr; --json prints
    only the figures on stdout.
    """
    from kvfp.fingerprint.evaluation import Protocol, run
    from kvfp.fingerprint.evaluation.report import table, to_json

    protocol = Protocol.standard(model, quick=quick, candidates=candidates)
    if work is None:
        work = Path("runs") / f"evaluate-{Path(model).name}-{'quick' if quick else 'full'}"
    result = run(protocol, work, log=lambda m: err_console.print(m, markup=False, highlight=False))
    if as_json:
        typer.echo(to_json(result))
        return
    Console().print(table(result))
