"""Request bodies for each API, and the checks a response must pass before it is logged.

A response that lacks the logprobs asked for, stops early without saying so, names another model,
or holds fewer top-k entries than asked at every step (a server cap) is refused with a message
naming the probe; ``kvfp identify`` never meets a silent gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvfp.query.spec import QuerySpec


class BadResponse(Exception):
    pass


def completion_body(spec: QuerySpec, prompt, echo: bool) -> dict:
    body = {"model": spec.model_name, "prompt": prompt, "max_tokens": spec.max_tokens, "temperature": 0,
            "seed": spec.seed, "logprobs": spec.top_logprobs}
    if echo:
        body["echo"] = True
    if spec.prompt_logprobs and not echo:
        body["prompt_logprobs"] = 1  # vLLM: the prompt token's own logprob, plus its best alternative
    if spec.ignore_eos:
        body["ignore_eos"] = True
    return {**body, **(spec.extra_body or {})}


def chat_body(spec: QuerySpec, text: str) -> dict:
    body = {"model": spec.model_name, "messages": [{"role": "user", "content": text}],
            "max_tokens": spec.max_tokens, "temperature": 0, "seed": spec.seed, "logprobs": True,
            "top_logprobs": spec.top_logprobs}
    if spec.prompt_logprobs:
        body["prompt_logprobs"] = 1
    if spec.ignore_eos:
        body["ignore_eos"] = True
    return {**body, **(spec.extra_body or {})}


@dataclass
class Seen:
    """What one response showed about the server."""

    steps: int = 0
    max_entries: int = 0  # the most top-k entries any step held
    short_steps: int = 0  # steps holding fewer than asked (string collisions in completions)
    prompt_tokens: int | None = None  # the server's usage count
    echo_tokens: list[str] = field(default_factory=list)
    prompt_logprobs: bool = False
    over_max: int = 0  # tokens beyond max_tokens


def _dict(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise BadResponse(f"{what} is {'missing' if v is None else type(v).__name__}, not an object")
    return v


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise BadResponse(f"{what} is {'missing' if v is None else type(v).__name__}, not a list")
    return v


def _common(spec: QuerySpec, resp: dict) -> tuple[dict, Seen]:
    model = resp.get("model")
    if model is not None and model != spec.model_name:
        raise BadResponse(f"the response is from model {model!r}, not {spec.model_name!r}")
    choices = _list(resp.get("choices"), "choices")
    if len(choices) != 1:
        raise BadResponse(f"expected one choice, found {len(choices)}")
    seen = Seen()
    usage = resp.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        seen.prompt_tokens = usage["prompt_tokens"]
    return _dict(choices[0], "choices[0]"), seen


def _length(spec: QuerySpec, n: int, choice: dict, seen: Seen) -> None:
    finish = choice.get("finish_reason")
    # llama-cpp-python goes past max_tokens to finish a character split over several tokens: more
    # real tokens, not a defect
    seen.over_max = max(0, n - spec.max_tokens)
    if n < spec.max_tokens and finish != "stop":
        raise BadResponse(f"cut short: {n} of {spec.max_tokens} tokens with finish_reason {finish!r} (not 'stop')")
    if n == 0:
        raise BadResponse("no tokens generated (the model stopped at once); nothing to identify from")


def _cap(spec: QuerySpec, seen: Seen) -> None:
    if seen.steps and seen.max_entries < spec.top_logprobs:
        raise BadResponse(f"at most {seen.max_entries} top logprobs per step where {spec.top_logprobs} were asked "
                          f"(the server's cap?): run again with --top-logprobs {seen.max_entries}")


def check_completion(spec: QuerySpec, resp: dict, echo: bool) -> Seen:
    choice, seen = _common(spec, resp)
    lp = _dict(choice.get("logprobs"), "choices[0].logprobs (asked for with logprobs)")
    tokens = _list(lp.get("tokens"), "choices[0].logprobs.tokens")
    lps = _list(lp.get("token_logprobs"), "choices[0].logprobs.token_logprobs")
    top = _list(lp.get("top_logprobs"), "choices[0].logprobs.top_logprobs")
    if not (len(tokens) == len(lps) == len(top)):
        raise BadResponse(f"logprobs lists differ in length (tokens {len(tokens)}, token_logprobs {len(lps)}, "
                          f"top_logprobs {len(top)})")
    start = 0
    if echo:
        if seen.prompt_tokens is None:
            raise BadResponse("with echo the server must report usage.prompt_tokens to separate prompt from output")
        start = seen.prompt_tokens
        if start > len(tokens):
            raise BadResponse(f"usage.prompt_tokens {start} exceeds the {len(tokens)} tokens echoed")
        seen.echo_tokens = [str(t) for t in tokens[:start]]
        seen.prompt_logprobs = any(v is not None for v in lps[1:start])
    _length(spec, len(tokens) - start, choice, seen)
    for t, row in enumerate(top[start:], start):
        row = _dict(row, f"choices[0].logprobs.top_logprobs[{t}]")
        if not isinstance(lps[t], (int, float)):
            raise BadResponse(f"choices[0].logprobs.token_logprobs[{t}] is {lps[t]!r}, not a number")
        seen.steps += 1
        seen.max_entries = max(seen.max_entries, len(row))
        # a completions list may carry the chosen token beyond the top-k (k + 1 entries)
        seen.short_steps += len(row) < spec.top_logprobs
    _cap(spec, seen)
    if spec.prompt_logprobs and not echo:
        seen.prompt_logprobs = choice.get("prompt_logprobs") is not None or resp.get("prompt_logprobs") is not None
    return seen


def check_chat(spec: QuerySpec, resp: dict) -> Seen:
    choice, seen = _common(spec, resp)
    lp = _dict(choice.get("logprobs"), "choices[0].logprobs (asked for with logprobs: true)")
    content = _list(lp.get("content"), "choices[0].logprobs.content")
    _length(spec, len(content), choice, seen)
    for t, entry in enumerate(content):
        entry = _dict(entry, f"choices[0].logprobs.content[{t}]")
        row = _list(entry.get("top_logprobs"), f"choices[0].logprobs.content[{t}].top_logprobs")
        seen.steps += 1
        seen.max_entries = max(seen.max_entries, len(row))
        seen.short_steps += len(row) < spec.top_logprobs
    _cap(spec, seen)
    if seen.short_steps:
        raise BadResponse(f"{seen.short_steps} step(s) hold fewer than the {spec.top_logprobs} top logprobs the other "
                          f"steps hold (a chat list cannot lose entries to string collisions: truncated response)")
    if spec.prompt_logprobs:
        seen.prompt_logprobs = resp.get("prompt_logprobs") is not None
    return seen
