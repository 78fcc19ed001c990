"""The model behind ``kvfp serve``: one model, one scheme, one request at a time."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from kvfp.errors import KvfpError

MAX_TOP_LOGPROBS = 20  # the cap OpenAI's API and most servers put on top_logprobs


@dataclass(frozen=True)
class ServeConfig:
    model: str = "kvfp-tiny"
    scheme: str = "none"
    dtype: str = "float32"
    attn: str = "sdpa"
    device: str = "cpu"
    served_name: str | None = None  # the name clients must send; default: ``model``
    hide_scheme: bool = False
    threads: int | None = None

    @property
    def name(self) -> str:
        return self.served_name or self.model


@dataclass
class Completion:
    """What one greedy run produced, already cut at end-of-sequence where asked."""

    prompt_ids: list[int]
    output_ids: list[int]
    token_logprobs: list[float]
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    prompt_logprobs: list[float | None] | None
    finish_reason: str


class Backend:
    """Loads the model once and runs greedy generation under the scheme, serialised by a lock
    (the runner attaches the scheme to the model for the duration of a call)."""

    def __init__(self, config: ServeConfig):
        import torch

        from kvfp.compressors.registry import parse_scheme
        from kvfp.models.loading import load
        from kvfp.probes.model_tokenizer import model_max_positions

        self.config = config
        self.scheme = parse_scheme(config.scheme)  # an unknown name fails before the model loads
        if config.threads:
            torch.set_num_threads(config.threads)
        self.model, self.tokenizer = load(config.model, dtype=config.dtype, device=config.device, attn=config.attn)
        self.scheme.check_model(self.model)  # refused at start, not as a 500 on the first request
        self.max_positions = model_max_positions(self.model.config)
        if self.max_positions is None:
            raise KvfpError(f"{config.model}: its config names no maximum number of positions", exit_code=2)
        self.vocab_size = int(self.model.config.vocab_size)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """A text prompt as the model's tokenizer segments it (special tokens such as BOS added the
        tokenizer's own way)."""
        return list(self.tokenizer(text)["input_ids"])

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The chat template applied to ``messages``, with the assistant's turn opened."""
        from kvfp.models.chat import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, messages)

    def complete(self, prompt_ids: list[int], max_tokens: int, top: int, prompt_logprobs: bool,
                 ignore_eos: bool) -> Completion:
        """Greedy generation of up to ``max_tokens`` tokens (``max_tokens == 0`` scores the prompt only)."""
        from kvfp.runner import generate

        steps = max(1, max_tokens)
        with self._lock:
            tr = generate(self.model, self.scheme, [prompt_ids], steps, topk=max(1, top),
                          prompt_logprobs=prompt_logprobs)[0]
        n, finish = max_tokens, "length"
        if not ignore_eos:
            stop = next((t for t, i in enumerate(tr.output_ids[:n]) if i in self.eos_ids), None)
            if stop is not None:  # the end-of-sequence token itself is not returned, as OpenAI's API does
                n, finish = stop, "stop"
        return Completion(prompt_ids=list(prompt_ids), output_ids=tr.output_ids[:n],
                          token_logprobs=tr.token_logprobs[:n], topk_ids=[r[:top] for r in tr.topk_ids[:n]],
                          topk_logprobs=[r[:top] for r in tr.topk_logprobs[:n]], prompt_logprobs=tr.prompt_logprobs,
                          finish_reason=finish)
