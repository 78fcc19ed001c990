"""``kvfp models list`` and ``kvfp models train-tiny``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvfp.cli.errors import user_errors
from kvfp.cli.options import JsonOpt, OutDir
from kvfp.errors import KvfpError

app = typer.Typer(help="Models kvfp can run.", no_args_is_help=True)


@app.command("list")
@user_errors
def list_models(as_json: JsonOpt = False) -> None:
    """List the packaged models, the GGUF-packaged ones (installed? converted?) and causal LMs in the
    local Hugging Face cache."""
    from kvfp.models import available

    models = available()
    if as_json:
        typer.echo(json.dumps([m.__dict__ for m in models], indent=2))
        return
    table = Table("name", "source", "detail", "path")
    for m in models:
        table.add_row(m.name, m.source, m.detail, m.path)
    Console().print(table)


@app.command("train-tiny")
@user_errors
def train_tiny(
    out: OutDir,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
) -> None:
    """Train kvfp-tiny from the Python standard library (about 30 min on 2 CPU cores).

    The same Python, torch and seed reproduce the packaged weights.
    """
    from kvfp.models.train_tiny import TinyTrainConfig
    from kvfp.models.train_tiny import train_tiny as run

    if Path(out).exists():
        raise KvfpError(f"{out} exists; kvfp never overwrites an output folder", exit_code=2)
    record = run(Path(out), TinyTrainConfig(seed=seed), log=typer.echo)
    typer.echo(f"wrote {out} (held-out loss {record['heldout_loss']:.4f})")
