"""``kvfp probes generate`` and ``kvfp probes show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvfp.cli.errors import user_errors
from kvfp.cli.options import ModelOpt
from kvfp.errors import KvfpError

app = typer.Typer(help="Probe suites: the prompts kvfp asks a model.", no_args_is_help=True)

SuiteFile = Annotated[Path, typer.Argument(help="A probe suite file (probes.jsonl).")]
SHOW_SPAN_TOKENS = 48  # a longer span is shown as its first and last this many tokens


def _parse_lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise KvfpError(f"--lengths {text!r}: expected comma-separated token counts such as 512,1024",
                        exit_code=2) from None
    if not out:
        raise KvfpError("--lengths is empty", exit_code=2)
    return out


@app.command()
@user_errors
def generate(
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Suite file to write; must not exist.")],
    suite: Annotated[str, typer.Option("--suite", help="default or quick.")] = "default",
    seed: Annotated[int, typer.Option(help="Seed for filler offsets, planted values and positions.")] = 0,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", help="Comma-separated lengths of the long families (default: the suite's, up to "
                          "half the model's maximum).")] = None,
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="UTF-8 text file to cut filler from (default: kvfp's held-out stdlib text).")] = None,
) -> None:
    """Generate a deterministic probe suite in the model's own tokens."""
    from kvfp.errors import UnknownNameError
    from kvfp.probes import SUITES, generate_suite, write_suite
    from kvfp.probes.model_tokenizer import load_tokenizer

    if suite not in SUITES:  # before any tokenizer is loaded
        raise UnknownNameError(f"unknown probe suite {suite!r}; choose one of {', '.join(SUITES)}")
    if out.exists():
        raise KvfpError(f"{out} already exists; kvfp never overwrites output. Choose another --out.", exit_code=2)
    wanted = _parse_lengths(lengths)
    text = None
    if corpus is not None:
        try:
            text = corpus.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KvfpError(f"--corpus {corpus}: cannot read it as UTF-8 text ({e})", exit_code=2) from None
    tokenizer, model_max = load_tokenizer(model)
    result = generate_suite(tokenizer, suite=suite, seed=seed, lengths=wanted, corpus=text, model_max=model_max,
                            model_name=model, corpus_name=str(corpus) if corpus else None)
    write_suite(out, result)
    h = result.header
    typer.echo(f"wrote {out}: {len(result)} probes (suite {suite}, seed {seed}, lengths "
               f"{','.join(map(str, h['lengths']))} + short {','.join(map(str, h['short_lengths']))}) "
               f"for {model}; suite hash {result.hash[:16]}")


@app.command()
@user_errors
def show(
    path: SuiteFile,
    probe_id: Annotated[str | None, typer.Option("--id", help="Show one probe's planted spans as text.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Tokenizer to decode with (default: the model named in the file).")] = None,
    context: Annotated[int, typer.Option(min=0, help="Tokens of context shown around each span.")] = 24,
) -> None:
    """List a suite's probes, or show where one probe's structure is planted."""
    from kvfp.probes import read_suite

    suite = read_suite(path)
    if probe_id is None:
        _table(suite, path)
        return
    probes = suite.by_id()
    if probe_id not in probes:
        raise KvfpError(f"no probe {probe_id!r} in {path}; its ids are: {', '.join(probes)}", exit_code=2)
    _detail(probes[probe_id], _tokenizer_for(suite, model, path), context)


def _table(suite, path: Path) -> None:
    h = suite.header
    table = Table("id", "family", "tokens", "spans", "answer",
                  title=f"{path}: {len(suite)} probes, suite {h.get('suite')}, seed {h.get('seed')}, "
                        f"model {h.get('model')}, hash {suite.hash[:16]}")
    for p in suite.probes:
        spans = ", ".join(f"{k} {a}:{b}" for k, (a, b) in sorted(p.spans.items(), key=lambda kv: kv[1]))
        table.add_row(p.id, p.family, str(p.n_tokens), spans, f"{len(p.answer_ids)} ids" if p.answer_ids else "")
    Console().print(table)


def _tokenizer_for(suite, model: str | None, path: Path):
    from kvfp.probes import tokenizer_hash
    from kvfp.probes.model_tokenizer import load_tokenizer

    name = model or suite.header.get("model")
    if not name:
        raise KvfpError(f"{path} names no model; pass --model to decode its probes", exit_code=2)
    tokenizer, _ = load_tokenizer(name)
    want = suite.header.get("tokenizer_hash")
    if want and tokenizer_hash(tokenizer) != want:
        raise KvfpError(f"the tokenizer of {name} is not the one {path} was generated with "
                        f"(tokenizer hash differs); pass the right --model", exit_code=2)
    return tokenizer


def _detail(probe, tokenizer, context: int) -> None:
    console = Console()
    console.print(Text(f"{probe.id}: {probe.family}, {probe.n_tokens} tokens", style="bold"))
    console.print(Text("params: " + json.dumps(probe.params, ensure_ascii=False)))
    for name, (a, b) in sorted(probe.spans.items(), key=lambda kv: kv[1]):
        line = Text(f"\n{name} [{a}, {b}) ", style="bold cyan")
        line.append(tokenizer.decode(probe.ids[max(a - context, 0):a]), style="dim")
        # Brackets as well as a style, so the span stays visible in a log or a pipe.
        line.append("⟦" + _span_text(tokenizer, probe.ids[a:b]) + "⟧", style="reverse")
        line.append(tokenizer.decode(probe.ids[b:b + context]), style="dim")
        console.print(line)
    if probe.answer_ids:
        answer = Text("⟦" + tokenizer.decode(probe.answer_ids) + "⟧", style="reverse")
        console.print(Text("\nanswer ", style="bold cyan") + answer)


def _span_text(tokenizer, ids: list[int]) -> str:
    if len(ids) <= 2 * SHOW_SPAN_TOKENS:
        return tokenizer.decode(ids)
    return (tokenizer.decode(ids[:SHOW_SPAN_TOKENS]) + f" … [{len(ids) - 2 * SHOW_SPAN_TOKENS} tokens] … "
            + tokenizer.decode(ids[-SHOW_SPAN_TOKENS:]))
