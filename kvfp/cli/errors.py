"""User errors are printed once, without a traceback, with their exit code."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from kvfp.errors import KvfpError

err_console = Console(stderr=True, highlight=False)


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KvfpError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper
