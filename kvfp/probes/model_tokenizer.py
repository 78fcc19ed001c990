"""A model's tokenizer and context length, without loading its weights."""

from __future__ import annotations

import os

from kvfp.models.loading import BROKEN_FOLDER, _hub_reachable, _not_found, broken_folder, resolve

# Where configs keep the context length, in the order they are tried (Llama/Qwen, GPT-2, others).
_MAX_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def model_max_positions(config) -> int | None:
    """The model's maximum positions from its config (a multimodal config's ``text_config`` too)."""
    for cfg in (config, getattr(config, "text_config", None)):
        for key in _MAX_KEYS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def load_tokenizer(name: str):
    """``(tokenizer, max positions or None)`` for a packaged name, a local folder or a hub id.

    Hub ids come from the local cache first; the network is tried only when the hub is enabled and
    reachable, as :func:`kvfp.models.load` does. An unknown name is a ``UnknownNameError``.
    """
    from transformers import AutoConfig, AutoTokenizer

    target, source = resolve(name)
    if source != "hub":
        try:
            return AutoTokenizer.from_pretrained(target), model_max_positions(AutoConfig.from_pretrained(target))
        except BROKEN_FOLDER as e:
            raise broken_folder(target, e) from None
    online = os.environ.get("HF_HUB_OFFLINE") != "1" and _hub_reachable()
    last = None
    for offline in ([True, False] if online else [True]):
        try:
            tok = AutoTokenizer.from_pretrained(target, local_files_only=offline)
            config = AutoConfig.from_pretrained(target, local_files_only=offline)
            return tok, model_max_positions(config)
        except (OSError, ValueError) as e:
            last = e
    why = ("the hub could not provide it" if online else
           "it is not in the local Hugging Face cache (the hub is offline or unreachable)")
    raise _not_found(name, f"{why} ({type(last).__name__})") from None
