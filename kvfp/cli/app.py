"""The ``kvfp`` command: wiring only; each command lives in its own module."""

import typer

from kvfp.cli import models, probes
from kvfp.cli.collect import collect
from kvfp.cli.evaluate import evaluate
from kvfp.cli.export import export
from kvfp.cli.identify import identify
from kvfp.cli.query import query
from kvfp.cli.schemes import schemes
from kvfp.cli.serve import serve
from kvfp.cli.train import train
from kvfp.cli.version import version

app = typer.Typer(
    name="kvfp",
    help="Fingerprint the KV-cache compression scheme behind an LLM endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(version)
app.command()(collect)
app.command()(export)
app.command()(schemes)
app.command()(evaluate)
app.command()(train)
app.command()(identify)
app.command()(serve)
app.command()(query)
app.add_typer(models.app, name="models")
app.add_typer(probes.app, name="probes")


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars are noise in a CLI that prints tables
    app()
