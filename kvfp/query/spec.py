"""What a ``kvfp query`` run asks of an endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

APIS = ("completions", "chat")
PROMPT_MODES = ("auto", "ids", "text")


@dataclass(frozen=True)
class QuerySpec:
    url: str  # the server's base URL, e.g. http://127.0.0.1:8000 (``/v1`` added when missing)
    model_name: str  # the model name the server expects in requests
    out: Path
    probes: str | None = None  # a suite file or a suite name; None: ``default``
    api: str = "completions"
    top_logprobs: int = 20
    max_tokens: int = 16
    concurrency: int = 1
    timeout: float = 120.0
    retries: int = 5
    api_key_env: str | None = None  # the *name* of the variable holding the key; the key is never stored
    prompt_logprobs: bool = False
    tokenizer_model: str | None = None  # kvfp model whose tokenizer the server uses; default: model_name
    prompt_mode: str = "auto"  # completions: token-id prompts, text prompts, or try ids then fall back
    ignore_eos: bool = False  # vLLM's extension: keep generating past end-of-sequence
    echo: bool = False  # text prompts: read the prompt ids the server used back through echo
    extra_body: dict | None = None  # server-specific fields merged into every request
    seed: int = 0

    @property
    def base(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith("/v1") else u + "/v1"

    def settings(self) -> dict:
        """What must stay the same for a log to be resumed (no URL: a restarted server may move)."""
        return {"api": self.api, "model": self.model_name, "top_logprobs": self.top_logprobs,
                "max_tokens": self.max_tokens, "prompt_logprobs": self.prompt_logprobs,
                "ignore_eos": self.ignore_eos, "extra_body": self.extra_body or {}}
