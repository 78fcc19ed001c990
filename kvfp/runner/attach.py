"""Attach a scheme to a transformers causal LM, and detach it again."""

from __future__ import annotations

from contextlib import contextmanager

from kvfp.compressors.scheme import Scheme
from kvfp.errors import KvfpError
from kvfp.runner import attention
from kvfp.runner.cache import KvfpCache

SUPPORTED_BASE = ("eager", "sdpa")


class Attached:
    """A model with kvfp's attention selected; makes fresh caches for a scheme."""

    def __init__(self, model, scheme: Scheme, base_attn: str):
        self.model, self.scheme, self.base_attn = model, scheme, base_attn
        self.prep = scheme.prepare(model)  # calibration, loaded or computed once per attach

    def new_cache(self) -> KvfpCache:
        # the rotary module serves schemes that quantize or project pre-RoPE keys
        rotary = getattr(getattr(self.model, "model", None), "rotary_emb", None)
        return KvfpCache(self.scheme, self.model.config.num_hidden_layers, self.base_attn, rotary, self.prep)


@contextmanager
def attach(model, scheme: Scheme):
    """Select kvfp's attention on ``model`` for the duration of the block.

    Only the model's ``attn_implementation`` setting changes (through transformers' own
    ``set_attn_implementation``), and the previous one is always restored.
    """
    base = model.config._attn_implementation
    if base == attention.NAME:
        raise KvfpError("a kvfp scheme is already attached to this model")
    if base not in SUPPORTED_BASE:
        raise KvfpError(
            f"kvfp runs over the model's eager or sdpa attention; this model uses {base!r}. "
            "Load it with attn_implementation='sdpa' or 'eager'."
        )
    attached = Attached(model, scheme, base)  # calibrates before anything on the model changes
    model.set_attn_implementation(attention.NAME)
    try:
        yield attached
    finally:
        model.set_attn_implementation(base)
