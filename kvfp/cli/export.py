"""``kvfp export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvfp.cli.errors import err_console, user_errors


@user_errors
def export(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by `kvfp collect`.")],
    format: Annotated[str, typer.Option("--format", "-f", help="kvfp-jsonl, openai-completions or openai-chat.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Log file to write; must not exist.")],
    scheme: Annotated[list[str] | None, typer.Option("--scheme", "-s", help="Only these schemes.")] = None,
    with_prompt_logprobs: Annotated[bool, typer.Option(
        "--with-prompt-logprobs", help="Add vLLM's prompt_logprobs to the OpenAI shapes.")] = False,
) -> None:
    """Write a dataset's traces as an endpoint log, one JSON object per line.

    kvfp-jsonl holds everything (ids exact, full logits where collected); the OpenAI shapes hold
    what those endpoints return, so collected data and real logs go through one reader.
    """
    from kvfp.datasets import FORMATS, export_dataset, open_dataset
    from kvfp.datasets.export import dataset_tokenizer
    from kvfp.errors import KvfpError, UnknownNameError

    if format not in FORMATS:
        raise UnknownNameError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if out.exists():
        raise KvfpError(f"{out} already exists; kvfp never overwrites output. Choose another --out.", exit_code=2)
    ds = open_dataset(dataset)
    if ds.missing():
        err_console.print(f"warning: {len(ds.missing())} unit(s) of {dataset} are not collected yet; exporting "
                          f"what is there (finish with the same `kvfp collect` command)")
    tok = None if format == "kvfp-jsonl" else dataset_tokenizer(ds)
    from kvfp.compressors import parse_scheme

    n = export_dataset(ds, format, out, schemes=[parse_scheme(s).name for s in scheme] if scheme else None,
                       with_prompt_logprobs=with_prompt_logprobs, tokenizer=tok)
    err_console.print(f"{n} traces written to {out} ({format})")
