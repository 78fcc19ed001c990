"""What identifies a tokenizer: the hash that ties probe suites, datasets and classifiers to one vocabulary."""

from __future__ import annotations

import hashlib
import json

# Runtime settings that a caller may toggle on a live tokenizer without changing what any text maps to.
_RUNTIME_KEYS = ("truncation", "padding")


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's definition (its ``tokenizer.json``, or its vocabulary).

    Parameters
    ----------
    tokenizer : a Hugging Face tokenizer (fast ``tokenizers`` backend or a slow one)

    Returns
    -------
    str
        64 hex digits; equal for two tokenizers that map every text to the same ids the same way.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for key in _RUNTIME_KEYS:
            spec.pop(key, None)
    else:
        # Slow tokenizers have no single serialised form; the vocabulary plus the special tokens
        # (which decide what gets added around a text) stand in for it.
        spec = {"vocab": sorted(tokenizer.get_vocab().items()),
                "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
                "class": type(tokenizer).__name__}
    blob = json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()
