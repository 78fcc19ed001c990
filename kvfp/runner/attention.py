"""kvfp's attention function, registered with transformers' ``AttentionInterface`` as ``"kvfp"``.

Transformers builds no mask for a registered implementation it does not know, so this function
builds its own from the cache layer's slot bookkeeping (causality, left padding, and whatever the
scheme restricts) and then delegates the arithmetic to the model's original implementation.
It is the one place where a scheme can observe attention (H2O, SnapKV…) and where a Triton kernel
will replace the reference computation.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "kvfp"


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The standard eager attention (as in transformers' Llama), returning probabilities.

    query ``(B, H, q, D)``, key/value ``(B, Hkv, S, D)``, additive mask broadcastable to
    ``(B, H, q, S)``. Returns output ``(B, q, H, D)`` and probabilities ``(B, H, q, S)``.
    """
    groups = query.shape[1] // key.shape[1]
    key_states, value_states = repeat_kv(key, groups), repeat_kv(value, groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _is_plain_causal(allowed: torch.Tensor) -> bool:
    """Whether sdpa may run mask-free, exactly as transformers decides for an unpadded batch."""
    q, s = allowed.shape[-2:]
    if q == 1:
        return bool(allowed.all())
    if q != s:
        return False
    causal = torch.ones(q, s, dtype=torch.bool, device=allowed.device).tril()
    return bool(torch.equal(allowed, causal.expand_as(allowed)))


def _to_query_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(B, Hkv, …)`` per-KV-head tensors → ``(B, H, …)``; a shared head axis of 1 stays."""
    return t if t.shape[1] in (1, n_heads) else t.repeat_interleave(n_heads // t.shape[1], dim=1)


def cache_types(scheme) -> tuple[str, str]:
    """The ggml types an engine keeps K and V in under ``scheme``: its own for ``ggml-*`` schemes
    (the storage half of a hybrid included), else the engine's default f16 cache."""
    store = getattr(scheme, "store", scheme)
    return getattr(store, "k_type", "F16").upper(), getattr(store, "v_type", "F16").upper()


def kvfp_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    cache = kwargs.pop("kvfp_cache", None)
    if cache is None:
        raise RuntimeError(
            "attention implementation 'kvfp' needs its cache passed as kvfp_cache=...; "
            "run the model through kvfp.runner (generate/replay) or kvfp.runner.attach"
        )
    layer = cache.layers[module.layer_idx]
    q_len, n_heads = query.shape[2], query.shape[1]
    allowed = _to_query_heads(layer.allowed(q_len), n_heads)  # (B, H|1, q, S)
    selected = layer.query_mask(query)
    if selected is not None:
        allowed = allowed & selected
    bias = layer.logit_bias()  # (B, Hm, S)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5

    engine = getattr(module, "kvfp_engine", None)  # an engine profile (kvfp.runner.engines) does its own arithmetic
    if engine is None and cache.base_attn == "sdpa" and not layer.wants_scores and bias is None:
        mask = None if _is_plain_causal(allowed) else allowed
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)

    additive = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    if bias is not None:
        additive = additive + _to_query_heads(bias[:, :, None, :], n_heads).to(query.dtype)
    additive = additive.masked_fill(~allowed, torch.finfo(query.dtype).min)
    if engine is not None:
        out, probs = engine.attention(query, key, value, additive, scaling, *cache_types(cache.scheme))
    else:
        out, probs = eager_attention(module, query, key, value, additive, scaling, dropout)
    if layer.wants_scores:
        layer.observe(probs)
    return out, probs


AttentionInterface.register(NAME, kvfp_attention_forward)
