"""``kvfp serve``."""

from __future__ import annotations

from typing import Annotated

import typer

from kvfp.cli.errors import err_console, user_errors
from kvfp.cli.options import AttnOpt, DeviceOpt, DtypeOpt, ModelOpt


@user_errors
def serve(
    model: ModelOpt,
    scheme: Annotated[str, typer.Option("--scheme", "-s", help="The KV-cache scheme to serve under (any "
                                                               "catalogue or grammar name).")] = "none",
    dtype: DtypeOpt = "float32",
    attn: AttnOpt = "sdpa",
    device: DeviceOpt = "cpu",
    host: Annotated[str, typer.Option(help="Address to bind. Loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="The model name clients send and see. "
                                                               "Default: --model.")] = None,
    hide_scheme: Annotated[bool, typer.Option("--hide-scheme", help="Leave the scheme out of /v1/models: a "
                                                                    "mystery endpoint to identify.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch CPU threads.")] = None,
) -> None:
    """Serve a model under a KV-cache scheme as an OpenAI-compatible endpoint.

    Routes: /v1/models, /v1/completions (text or token-id prompts, logprobs, echo, vLLM's
    prompt_logprobs) and /v1/chat/completions (logprobs, top_logprobs). Decoding is greedy; top
    logprobs are capped at 20. Stop with Ctrl-C.
    """
    import uvicorn

    from kvfp.serve import Backend, ServeConfig, make_app

    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] binding {host}: the endpoint is reachable from other machines",
                          markup=True)
    cfg = ServeConfig(model=model, scheme=scheme, dtype=dtype, attn=attn, device=device,
                      served_name=served_model_name, hide_scheme=hide_scheme, threads=threads)
    backend = Backend(cfg)
    shown = "hidden" if hide_scheme else backend.scheme.name
    err_console.print(f"serving {cfg.name} (scheme {shown}) on http://{host}:{port}/v1")
    try:
        uvicorn.run(make_app(backend), host=host, port=port, log_level="warning")
    except OSError as e:  # e.g. the port is taken
        from kvfp.errors import KvfpError

        raise KvfpError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
