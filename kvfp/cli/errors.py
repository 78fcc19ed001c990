"""User errors are printed once, without a traceback, with their exit code."""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from kvfp.errors import KvfpError

err_console = Console(stderr=True, highlight=False)


def os_error_text(e: OSError) -> str:
    """The path(s) an OS error concerns and the OS's reason, on one line: ``/proc/x: No such file or directory``."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and isinstance(e.filename, (str, os.PathLike)):
        # mkdir says "File exists" for a file where a folder is needed (an --out under a file): name the file
        blocker = next((p for p in (Path(e.filename), *Path(e.filename).parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            below = "" if blocker == Path(e.filename) else f" (to hold {e.filename})"
            return f"{blocker} is a file where a folder is needed{below}"
    # errno's own wording where there is one: pyarrow and others wrap it in longer prose
    reason = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return " ".join((f"{where}: {reason}" if where else reason).split())


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KvfpError as e:
            _print(str(e))
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            # what the machine refused (a full disk, a read-only file system, an --out under a file or
            # in /proc): not a bug, and the OS's reason with the path is the whole story. Mistakes kvfp
            # can see coming (an existing --out, a missing input) are KvfpErrors raised before this.
            _print(os_error_text(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


def _print(message: str) -> None:
    # escaped: a path or a field such as "logprobs[t]" must not be read as rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
