"""Decode attention over a quantized K/V cache plus a full-precision residual window: the
specification of :mod:`kvfp.kernels.decode_attention_triton`.

The cache of every KV head is ``S_q`` quantized entries (:class:`~kvfp.kernels.quant_layout.QuantTensor`,
any layout, e.g. symmetric per token, or KIVI's per-channel keys and per-token values) followed
by ``R`` entries kept exactly (KIVI's residual), ``S = S_q + R`` in all. Dequantized entries are
rounded to the query's dtype, as the stores' decoded mirror is, and the attention itself is
computed in float32.
"""

from __future__ import annotations

import torch

from kvfp.kernels.quant_layout import QuantTensor


def check_decode_inputs(q: torch.Tensor, k: QuantTensor, v: QuantTensor, k_res: torch.Tensor | None,
                        v_res: torch.Tensor | None, valid: torch.Tensor | None) -> tuple[int, int]:
    """Raise ValueError on shapes that do not fit together; returns ``(S_q, R)``."""
    B, H, q_len, D = q.shape
    if q_len != 1:
        raise ValueError(f"decode attention takes one query per sequence, not {q_len}")
    if k.shape != v.shape or k.shape[0] != B or k.shape[-1] != D:
        raise ValueError(f"query {tuple(q.shape)} does not fit keys {k.shape} and values {v.shape}")
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"{H} query heads cannot share {Hkv} KV heads evenly")
    if (k_res is None) != (v_res is None):
        raise ValueError("keys and values need a residual window together")
    R = 0
    if k_res is not None:
        if k_res.shape != v_res.shape or k_res.shape[:2] != (B, Hkv) or k_res.shape[-1] != D:
            raise ValueError(f"residual {tuple(k_res.shape)} / {tuple(v_res.shape)} does not fit the cache")
        R = k_res.shape[2]
    S = k.shape[2] + R
    if valid is not None and (valid.shape[0] != B or valid.shape[1] not in (1, Hkv) or valid.shape[2] != S):
        raise ValueError(f"valid mask {tuple(valid.shape)} does not fit {B} sequences of {S} entries")
    return k.shape[2], R


def decode_attention_ref(q: torch.Tensor, k: QuantTensor, v: QuantTensor, k_res: torch.Tensor | None = None,
                         v_res: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                         scaling: float | None = None) -> torch.Tensor:
    """One decode step of grouped-query attention.

    Parameters
    ----------
    q : ``(B, H, 1, D)`` the new token's queries (RoPE applied)
    k, v : quantized ``(B, Hkv, S_q, D)``; query head ``h`` reads KV head ``h // (H // Hkv)``
    k_res, v_res : ``(B, Hkv, R, D)`` exact entries after the quantized ones, or None
    valid : ``(B, 1 | Hkv, S_q + R)`` bool, False for entries the query must not see, or None
    scaling : logit scale, default ``D ** -0.5``

    Returns
    -------
    ``(B, H, 1, D)`` in ``q``'s dtype
    """
    check_decode_inputs(q, k, v, k_res, v_res, valid)
    B, H, _, D = q.shape
    group = H // k.shape[1]
    keys, values = k.dequantize(q.dtype), v.dequantize(q.dtype)  # (B, Hkv, S_q, D)
    if k_res is not None:
        keys = torch.cat([keys, k_res.to(q.dtype)], dim=2)
        values = torch.cat([values, v_res.to(q.dtype)], dim=2)
    kf = keys.float().repeat_interleave(group, dim=1)  # (B, H, S, D)
    vf = values.float().repeat_interleave(group, dim=1)
    logits = (q.float() @ kf.transpose(-1, -2)) * (D**-0.5 if scaling is None else scaling)  # (B, H, 1, S)
    if valid is not None:
        allowed = valid.bool().repeat_interleave(H // valid.shape[1], dim=1)[:, :, None, :]
        logits = logits.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(logits, dim=-1) @ vf).to(q.dtype)
