"""``kvfp version``."""

import platform

import torch
import transformers
import typer

import kvfp


def version() -> None:
    """Print kvfp's version and the versions it runs with."""
    typer.echo(f"kvfp {kvfp.__version__} (torch {torch.__version__}, transformers {transformers.__version__}, "
               f"python {platform.python_version()})")
