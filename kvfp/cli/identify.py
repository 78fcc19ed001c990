"""``kvfp identify``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import DeviceOpt, JsonOpt, ModelOpt
from kvfp.cli.progress import progress_bar


def _finite(o):
    """JSON has no NaN or Infinity: a number that is not finite is written as null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _plain(o):
    """JSON for numpy scalars and arrays that identifications may carry."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


@user_errors
def identify(
    log: Annotated[Path, typer.Argument(help="Endpoint log: kvfp JSONL, OpenAI completions/chat, or text.")],
    model: ModelOpt,
    classifier: Annotated[Path, typer.Option("--classifier", "-c", help="Folder written by `kvfp train`.")],
    tier: Annotated[str, typer.Option(help="auto, logits, topk-20, topk-5, prompt or tokens.")] = "auto",
    probes: Annotated[Path | None, typer.Option("--probes", "-p", help="The probe suite the log answers "
                                                                       "(resolves probe ids; span profiles).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Log format, or auto.")] = "auto",
    top: Annotated[int, typer.Option(min=1, help="Schemes listed per verdict.")] = 5,
    device: DeviceOpt = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Name the KV-cache compression scheme behind an endpoint's responses to kvfp probes.

    Prints the pooled verdict over every response in the log (ranked schemes with probabilities,
    the gene and parameter estimates, the open-set decision) and the evidence: how far the
    responses depart from the reference at each context position, beside a benign bf16 replay.
    """
    from kvfp.fingerprint.identify import identify_log

    with progress_bar("replaying", "replay", quiet=quiet) as progress:
        report = identify_log(log, model, classifier, tier=tier, probes=probes, fmt=fmt, top=top,
                              log_progress=lambda m: err_console.print(m), replay_progress=progress, device=device)
    if as_json:
        plain = json.loads(json.dumps(report.to_dict(), default=_plain))  # numpy values to Python ones first
        typer.echo(json.dumps(_finite(plain), indent=2, allow_nan=False))
        return
    _print(report)


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def _print(r) -> None:
    con = Console()
    p = r.pooled
    con.print(f"[bold]{r.log}[/]: {r.n_observations} response(s), {r.scored_tokens} scored tokens, tier {r.tier}")
    if p["unknown"]:
        verdict = "UNKNOWN scheme (the evidence fits no known scheme)"
    elif not p["compressed"]:
        verdict = "no KV compression detected (none)"
    else:
        verdict = f"compressed: {p['verdict']}"
    con.print(f"verdict: [bold]{verdict}[/]  (open-set novelty {p['novelty']:.3g}, threshold {p['threshold']:.3g})")
    if r.indistinguishable:
        con.print(f"indistinguishable on these probes (identical outputs): {', '.join(r.indistinguishable)}")
    t = Table(title="schemes (calibrated, closed set)")
    t.add_column("scheme")
    t.add_column("probability", justify="right")
    for s, prob in p["schemes"]:
        t.add_row(str(s), f"{prob:.3f}")
    con.print(t)
    if p.get("gene"):
        con.print("gene: " + ", ".join(f"{k}={v}" for k, v in p["gene"].items()))
    if p.get("params"):
        con.print("parameter estimates: " + ", ".join(f"{k}≈{_fmt(v)}" for k, v in p["params"].items()))
    e = r.evidence
    t = Table(title=f"evidence: {e['measure']}")
    t.add_column("positions")
    t.add_column("observed", justify="right")
    t.add_column("bf16 noise", justify="right")
    t.add_column("n", justify="right")
    for b in range(len(e["counts"])):
        t.add_row(f"{e['edges'][b]}–{e['edges'][b + 1] - 1}", _fmt(e["observed"][b]), _fmt(e["noise"][b]),
                  str(e["counts"][b]))
    con.print(t)
    if len(r.per_observation) > 1:
        t = Table(title="per response")
        for c in ("probe", "verdict", "top scheme", "p"):
            t.add_column(c)
        for o in r.per_observation:
            s, prob = o["schemes"][0]
            v = "unknown" if o["unknown"] else (o["verdict"] if o["compressed"] else "none")
            t.add_row(str(o["probe_id"]), str(v), str(s), f"{prob:.2f}")
        con.print(t)
    for n in dict.fromkeys(r.notes):
        con.print(f"[dim]note: {n}[/]")
