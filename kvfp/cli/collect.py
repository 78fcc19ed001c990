"""``kvfp collect``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import AttnOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OutDir


@user_errors
def collect(
    model: ModelOpt,
    scheme: Annotated[list[str], typer.Option("--scheme", "-s", help="Scheme name; repeat for several.")],
    out: OutDir,
    new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per prompt.")] = 32,
    topk: Annotated[int, typer.Option(min=1, help="Top-k log-probabilities kept per step.")] = 20,
    logits: Annotated[bool, typer.Option("--logits", help="Also keep full float32 logits.")] = False,
    dtype: DtypeOpt = "float32",
    attn: AttnOpt = "sdpa",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward (left padding).")] = 1,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Generate traces of the built-in prompt set under each scheme and compare them with none."""
    from kvfp.collect import collect as run

    summary = run(model, scheme, out, new_tokens=new_tokens, topk=topk, logits=logits, dtype=dtype,
                  attn=attn, batch_size=batch_size, device=device, log=lambda m: err_console.print(m))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table("scheme", "tokens = none", "mean |Δ logit| vs none", "KV bytes/token/layer",
                  title=f"{summary['traces']} traces in {summary['out']} ({summary['seconds']:.1f}s)")
    for name, s in summary["schemes"].items():
        table.add_row(name, f"{s['token_agreement']:.1%}", f"{s['mean_abs_logit_diff']:.4f}",
                      f"{s['bytes_per_token_layer']:.0f} / {s['uncompressed_bytes_per_token_layer']}")
    Console().print(table)
