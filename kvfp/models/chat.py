"""A chat prompt as token ids: the model's own template, the assistant's turn opened."""

from __future__ import annotations


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """``tokenizer``'s chat template applied to ``messages`` with the generation prompt, as ids.

    Raises ``ValueError`` when the tokenizer has no chat template. transformers returns a list or,
    in some versions, a ``BatchEncoding``; both give the same ids here.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]
