"""``kvfp schemes``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvfp.cli.errors import user_errors
from kvfp.cli.options import JsonOpt


def _gene_text(g: dict) -> str:
    parts = [g["algorithm"]]
    if g["granularity"]:
        parts.append("/".join(g["granularity"]))
    parts.append(g["strategy"])
    if g["importance"] != "none":
        parts.append(g["importance"])
    if g["compensation"]:
        parts.append("+".join(g["compensation"]))
    parts.append(f"phase={g['phase']}")
    return " ".join(parts)


@user_errors
def schemes(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model to measure memory on.")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="Measure bytes kept per token per layer.")] = False,
    scheme: Annotated[list[str] | None, typer.Option("--scheme", "-s", help="Only these schemes.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List canonical schemes with their genes and defaults; with --measure, the memory each keeps."""
    from kvfp.compressors import canonical_schemes, parse_scheme
    from kvfp.errors import KvfpError

    chosen = [parse_scheme(s) for s in scheme] if scheme else canonical_schemes()
    rows = [{"name": s.name, "family": s.family, "summary": s.summary, "gene": s.gene.to_dict()} for s in chosen]
    if measure:
        if not model:
            raise KvfpError("--measure needs --model (e.g. --model kvfp-tiny)", exit_code=2)
        from kvfp.compressors.measure import measure_memory
        from kvfp.models import load

        m, tok = load(model)
        for row, fig in zip(rows, measure_memory(m, tok, chosen)):
            row["bytes_per_token_layer"] = fig.bytes_per_token_layer
            row["uncompressed_bytes_per_token_layer"] = fig.uncompressed_bytes_per_token_layer
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("scheme", "gene", "params", *(["bytes/token/layer", "ratio"] if measure else []),
                  title=f"{len(rows)} schemes")
    for r in rows:
        extra = []
        if measure:
            b, u = r["bytes_per_token_layer"], r["uncompressed_bytes_per_token_layer"]
            extra = [f"{b:.1f} / {u}", f"{b / u:.3f}"]
        params = ", ".join(f"{k}={v}" for k, v in r["gene"]["params"].items())
        table.add_row(r["name"], _gene_text(r["gene"]), params, *extra)
    Console().print(table)
