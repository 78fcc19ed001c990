"""``kvfp train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import DeviceOpt, JsonOpt
from kvfp.cli.progress import progress_bar
from kvfp.errors import KvfpError
from kvfp.runner import engines


def data_engine(manifests: list[dict], chosen: str | None) -> str:
    """The engine profile to train under: ``chosen``, else the one every dataset was collected under."""
    seen = sorted({m.get("settings", {}).get("engine", "transformers") for m in manifests})
    if chosen is not None:
        return engines.check_engine(chosen)
    if len(seen) > 1:
        raise KvfpError(f"the datasets were collected under different engines ({', '.join(seen)}); "
                        "choose the replays' with --engine", exit_code=2)
    return seen[0]


@user_errors
def train(
    data: Annotated[list[Path], typer.Option("--data", "-d", help="Dataset folder from `kvfp collect`; repeat "
                                                                  "for several (one model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Classifier folder to write; must not exist.")],
    tier: Annotated[list[str] | None, typer.Option("--tier", "-t", help="Tier to train; repeat. Default: every "
                                                                        "tier the data supports.")] = None,
    candidates: Annotated[str | None, typer.Option(help="Comma-separated schemes simulated per observation, "
                                                        "or 'all' (the catalogue). Default: every scheme "
                                                        "the data labels.")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Engine whose emulated arithmetic is the noise yardstick (transformers: bf16/sdpa; "
                         "llama.cpp). Default: the one the data was collected under.")] = None,
    device: DeviceOpt = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a fingerprinter on collected datasets.

    Every trace is labelled with the scheme that produced it. Features compare it with the
    reference model replaying its tokens (and with each candidate scheme); one classifier stack
    per access tier is saved as safetensors + JSON (no pickle), tied to the model and tokenizer.
    """
    from kvfp.compressors import canonical_names
    from kvfp.fingerprint.persist import save_fingerprinter
    from kvfp.fingerprint.reference import REFERENCE
    from kvfp.fingerprint.training import fit_fingerprinter, load_labelled
    from kvfp.models import load
    from kvfp.models.loading import check_device

    check_device(device)
    if out.exists():
        raise KvfpError(f"{out} already exists; kvfp never overwrites output. Choose another --out.", exit_code=2)
    labelled = load_labelled(data)
    cands = None
    if candidates:
        cands = list(canonical_names()) if candidates == "all" else [c.strip() for c in candidates.split(",") if c]
    model_id = labelled.manifests[0]["model"]["id"]
    model, tok = load(model_id, dtype=REFERENCE[1], attn=REFERENCE[2], device=device)
    profile = engines.for_model(model_id, data_engine(labelled.manifests, engine))
    n_schemes = len(set(labelled.labels))
    err_console.print(f"{len(labelled)} observations of {n_schemes} schemes from {len(data)} dataset(s)")
    with progress_bar("replaying", "replay", quiet=quiet) as progress:
        trained, X = fit_fingerprinter(labelled, model, tok, tiers=tier or None, candidates=cands, engine=profile,
                                       log=lambda m: err_console.print(m), progress=progress)
    save_fingerprinter(out, trained)
    summary = {"out": str(out), "model": model_id, "tiers": list(trained.tiers), "observations": len(labelled),
               "schemes": sorted(set(labelled.labels)), "candidates": trained.candidates}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"saved {out}: {len(summary['schemes'])} schemes, tiers {', '.join(summary['tiers'])}")
