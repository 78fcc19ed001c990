"""``kvfp query``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import JsonOpt
from kvfp.cli.progress import progress_bar


@user_errors
def query(
    url: Annotated[str, typer.Option(help="The server's base URL, e.g. http://127.0.0.1:8000 (/v1 is added).")],
    model_name: Annotated[str, typer.Option(help="The model name the server expects in requests.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The log to write; an existing log of the same "
                                                          "run is resumed (only unanswered probes are sent).")],
    probes: Annotated[str | None, typer.Option("--probes", "-p", help="Probe suite file or name (default, "
                                                                      "quick). Default: default.")] = None,
    api: Annotated[str, typer.Option(help="completions or chat.")] = "completions",
    top_logprobs: Annotated[int, typer.Option(min=1, max=20, help="Top logprobs asked per step.")] = 20,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per probe.")] = 16,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at once.")] = 1,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for one response.")] = 120.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries per request on 429, 5xx, timeouts and dropped "
                                                     "connections.")] = 5,
    api_key_env: Annotated[str | None, typer.Option(help="Name of the environment variable that holds the API "
                                                         "key (the key itself is never written anywhere).")] = None,
    prompt_logprobs: Annotated[bool, typer.Option("--prompt-logprobs", help="Also ask for the prompt tokens' "
                                                  "logprobs (vLLM's prompt_logprobs).")] = False,
    tokenizer_model: Annotated[str | None, typer.Option(help="kvfp model or folder whose tokenizer the server "
                                                             "uses. Default: --model-name.")] = None,
    prompt_mode: Annotated[str, typer.Option(help="completions: auto (token ids, else text), ids, or text.")] = "auto",
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Ask the server to generate past end of "
                                                                  "sequence (vLLM's ignore_eos).")] = False,
    echo: Annotated[bool, typer.Option("--echo", help="Text prompts: read the prompt ids the server used back "
                                                      "through echo (costly on some servers).")] = False,
    extra_body: Annotated[str | None, typer.Option(help="JSON object merged into every request, for a server's own "
                                                        "fields, e.g. '{\"repeat_penalty\": 1.0}'.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a probe suite to an OpenAI-compatible endpoint and log its responses for `kvfp identify`.

    Greedy requests (temperature 0, fixed seed) asking for top logprobs; each answered probe is one
    log line: the response as received plus a "kvfp" object naming the prompt it answers. Run the
    same command again to resume after any failure.
    """
    from kvfp.errors import KvfpError
    from kvfp.query import QuerySpec
    from kvfp.query import query as run

    extra = None
    if extra_body is not None:
        try:
            extra = json.loads(extra_body)
        except ValueError as e:
            raise KvfpError(f"--extra-body is not valid JSON ({e})", exit_code=2) from None
        if not isinstance(extra, dict):
            raise KvfpError("--extra-body must be a JSON object", exit_code=2)
    spec = QuerySpec(url=url, model_name=model_name, out=out, probes=probes, api=api, top_logprobs=top_logprobs,
                     max_tokens=max_tokens, concurrency=concurrency, timeout=timeout, retries=retries,
                     api_key_env=api_key_env, prompt_logprobs=prompt_logprobs, tokenizer_model=tokenizer_model,
                     prompt_mode=prompt_mode, ignore_eos=ignore_eos, echo=echo,
                     extra_body=extra)
    with progress_bar("querying", "probe", quiet=quiet) as progress:
        summary = run(spec, progress=progress, log=lambda m: err_console.print(m))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    s = summary
    t = Table(title=f"{out}: {s.answered_before + s.answered_now} of {s.probes} probes answered "
                    f"({s.answered_now} now)", show_header=False)
    text = "text" + (" (ids read back through echo)" if echo else "")
    t.add_row("prompts sent as", {"ids": "token ids", "text": text,
                                  "chat": "chat messages (template applied by the server)"}.get(s.prompt_mode, "—"))
    if s.token_id_prompts is not None:
        t.add_row("token-id prompts", "accepted" if s.token_id_prompts else "refused")
    t.add_row("top logprobs per step", f"up to {s.top_logprobs_max} of {top_logprobs} asked" if s.steps else "—")
    if s.short_steps:
        t.add_row("steps with fewer entries", f"{s.short_steps} of {s.steps} (token strings that collide in a "
                                              f"list keyed by string)")
    if s.prompt_logprobs is not None:
        t.add_row("prompt logprobs", "returned" if s.prompt_logprobs else "not returned")
    if s.prompt_checks:
        t.add_row("prompt check", ", ".join(f"{k}: {v}" for k, v in sorted(s.prompt_checks.items())))
    t.add_row("retries", str(s.retries))
    Console().print(t)
    for n in s.notes:
        err_console.print(f"[dim]note: {n}[/]", markup=True)
