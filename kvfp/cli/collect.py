"""``kvfp collect``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import AttnOpt, DeviceOpt, DtypeOpt, EngineOpt, FlashAttnOpt, JsonOpt, ModelOpt

OutDataset = Annotated[str, typer.Option("--out", "-o", help="Dataset folder: new, empty, or one of the same "
                                                           "run (same model, probes, settings; schemes may be "
                                                           "added): then only missing units run.")]


@user_errors
def collect(
    model: ModelOpt,
    scheme: Annotated[list[str], typer.Option("--scheme", "-s", help="Scheme name; repeat for several; "
                                                                     "'all' = every canonical scheme.")],
    out: OutDataset,
    probes: Annotated[str | None, typer.Option("--probes", "-p", help="Probe suite file, or a suite name "
                                                                      "(default, quick). Default: default.")] = None,
    new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per probe.")] = 32,
    topk: Annotated[int, typer.Option(min=1, help="Top-k log-probabilities kept per step.")] = 20,
    logits: Annotated[bool, typer.Option("--logits", help="Also keep full float32 logits.")] = False,
    prompt_logprobs: Annotated[bool, typer.Option(help="Keep each prompt token's logprob (the prompt tier).")] = True,
    dtype: DtypeOpt = "float32",
    attn: AttnOpt = "sdpa",
    engine: EngineOpt = "transformers",
    flash_attn: FlashAttnOpt = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Probes per forward (left padding).")] = 1,
    device: DeviceOpt = "cpu",
    shard_size: Annotated[int, typer.Option(min=1, help="Probes per shard file (one unit of work).")] = 4,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the units on this machine.")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch CPU threads per process (recorded: the "
                                                           "last bits of results depend on it). Default: the "
                                                           "cores shared among workers.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run schemes over a probe suite into a dataset folder and compare each with none.

    The folder gets manifest.json, probes.jsonl and one Parquet shard per scheme × shard of
    probes. A run that is interrupted (even killed) resumes when the same command runs again;
    several processes may work on one folder at once.
    """
    from pathlib import Path

    from kvfp.collect import CollectSpec
    from kvfp.collect import collect as run

    spec = CollectSpec(model=model, schemes=tuple(scheme), out=Path(out), probes=probes, new_tokens=new_tokens,
                       topk=topk, logits=logits, prompt_logprobs=prompt_logprobs, dtype=dtype, attn=attn,
                       batch_size=batch_size, device=device, shard_size=shard_size, workers=workers,
                       threads=threads, engine=engine, flash_attn=flash_attn)
    result = run(spec, log=lambda m: err_console.print(m))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    u = result["units"]
    table = Table("scheme", "tokens = none", "mean |Δ logit| vs none", "KV bytes/token/layer",
                  title=f"{result['traces']} traces in {result['out']} ({u['total'] - u['done_before']} of "
                        f"{u['total']} units run, {result['seconds']:.1f}s)")
    for name, s in result["schemes"].items():
        agree = "—" if s["token_agreement"] is None else f"{s['token_agreement']:.1%}"
        dlog = "—" if s["mean_abs_logit_diff"] is None else f"{s['mean_abs_logit_diff']:.4f}"
        mem = "—" if s["bytes_per_token_layer"] is None else \
            f"{s['bytes_per_token_layer']:.0f} / {s['uncompressed_bytes_per_token_layer']}"
        table.add_row(name, agree, dlog, mem)
    Console().print(table)
    if u["left"]:
        err_console.print(f"{u['left']} unit(s) not done yet; run the same command again to finish")
