"""Which log format a line is in, from its keys."""

from __future__ import annotations

FORMATS = ("kvfp-jsonl", "openai-completions", "openai-chat", "text")


def detect_record(rec: dict) -> str | None:
    """The format of one parsed line, or ``None`` when it looks like none of them."""
    if "output_ids" in rec:
        return "kvfp-jsonl"
    kind = rec.get("object")
    if kind == "chat.completion":
        return "openai-chat"
    if kind == "text_completion":
        return "openai-completions"
    choices = rec.get("choices")
    if isinstance(choices, list):
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        if "message" in first:
            return "openai-chat"
        if "text" in first or "logprobs" in first:
            return "openai-completions"
        return None
    if "text" in rec:
        return "text"
    return None


def describe(rec: dict) -> str:
    """A line's top-level keys, for an error saying it matched no format."""
    keys = sorted(rec)
    return ", ".join(keys[:10]) + ("…" if len(keys) > 10 else "") if keys else "none"
