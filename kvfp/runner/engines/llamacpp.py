"""The llama.cpp engine profile: kvfp's replay doing the arithmetic llama.cpp's CPU backend does.

An endpoint served by llama.cpp does not compute what float32 transformers computes, even with an
f16 cache; the difference is as large as an 8-bit KV cache's mark. What ggml's CPU backend does,
read from its source (ggml-cpu ``ops.cpp``, ``vec.h``, ``arch/x86/quants.c``; llama.cpp's
``llama-graph.cpp``), and how this profile mirrors it:

* **Matrix products with quantized weights.** ``mul_mat`` converts the activation row into the
  weight type's ``vec_dot_type`` before the dot product: ``q8_1`` for Q4_1/Q5_1 weights, ``q8_0``
  for Q8_0/Q4_0/Q5_0/IQ4_NL, f16 for F16, nothing for F32. Blocks of 32 along the input, the x86
  SIMD quantizer (``id = 127 / amax``, ties to even; ``d`` kept in fp16). For ``q8_1`` the weight's
  block minimum multiplies the block's stored sum ``s = fp16(d * sum(q))``. The profile quantizes
  every Linear's input the same way (a forward pre-hook) and adds the ``s`` rounding term for Q4_1
  weights, whose block minima are the dequantized block minima (q4_1 maps a block's minimum to
  code 0). Per-block products are exact integers in ggml; here they are float32 sums — only the
  summation order differs.
* **The f16 cache, prefill included.** K and V are written to the cache before attention reads
  them, so every key and value the model attends to is an fp16 value (for the default cache;
  ``ggml-*`` schemes decode their own blocks).
* **KQ.** The query is converted to the K cache type's ``vec_dot_type`` (f16 for an f16 cache,
  ``q8_0``/``q8_1`` blocks for quantized caches), the dot product accumulates in f32, softmax is
  f32 with the scale applied inside it.
* **KQV, flash attention off.** ``mul_mat(v, kq)`` converts the f32 probabilities to f16 before
  the product: every attention weight is rounded to half precision.
* **KQV, flash attention on.** Probabilities stay f32 (online softmax), but with an f16 V cache
  the unnormalised output is accumulated in an f16 buffer, rounded after every key. The profile
  approximates this by rounding the output to f16 once (exact emulation is sequential over keys);
  the flash-attention variant serves as the benign-noise yardstick, not as the reference.
* **RoPE.** ggml builds each position's angles by repeated f32 multiplication
  (``theta *= powf(base, -2/d)``), not as ``position * inv_freq``; the profile rebuilds the
  cos/sin tables that way.

What is not emulated (each below float32 rounding of the logits as measured in
``benchmarks/real_engine.py``): RMSNorm's double accumulation, ggml's vectorised exp/silu, the
summation order of dot products and tiled prefill kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kvfp.kernels import ggml_quants

PARTS = ("matmul", "norm", "cache", "attention", "rope")

# ggml's vec_dot_type of each weight / cache type: what the other operand is converted to
VEC_DOT = {"F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q4_0": "Q8_0", "Q5_0": "Q8_0",
           "IQ4_NL": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1"}


def quantize_q8_activations(x: torch.Tensor, with_sum: bool = False):
    """x86 SIMD ``quantize_row_q8_0``/``q8_1`` of float32 rows, blocks of 32 on the last axis
    (:mod:`kvfp.kernels.ggml_quants`, ``kernel="x86_avx"``).

    Returns the dequantized values ``fp16(d) * q`` ``(…, D)`` and, with ``with_sum``, the q8_1
    block sums ``fp16(d * sum(q))`` minus what the dequantized values already sum to, ``(…, D/32)``:
    the term a q8_1 dot product adds beyond ``dequant(w) @ dequant(x)``.
    """
    blocks = ggml_quants.quantize(x, "q8_1", kernel="x86_avx")
    deq = ggml_quants.dequantize(blocks, "q8_1")
    if not with_sum:
        return deq, None
    qsum = blocks["codes"].float().reshape(*x.shape[:-1], -1, 32).sum(-1)
    return deq, blocks["s"].float() - blocks["d"].float() * qsum


def round_to(x: torch.Tensor, vec_dot: str) -> torch.Tensor:
    """``x`` as the dot product's other operand sees it after conversion to ``vec_dot``."""
    if vec_dot == "F16":
        return x.half().to(x.dtype)
    if vec_dot == "BF16":
        return x.bfloat16().to(x.dtype)
    if vec_dot in ("Q8_0", "Q8_1"):
        return quantize_q8_activations(x)[0].to(x.dtype)
    return x


class _LinearHook:
    """Quantize a Linear's input as ggml's mul_mat does for the weight's type."""

    def __init__(self, module: torch.nn.Linear, weight_type: str):
        self.vec_dot = VEC_DOT.get(weight_type, "F32")
        self.mins = None
        if weight_type == "Q4_1":  # block minima: code 0 of every q4_1 block dequantizes to m
            w = module.weight.detach().float()
            self.mins = w.reshape(w.shape[0], -1, 32).amin(-1)  # (out, in/32)
        self.extra = None

    def pre(self, module, args):
        x = args[0]
        if self.vec_dot in ("Q8_0", "Q8_1"):
            deq, extra = quantize_q8_activations(x, with_sum=self.mins is not None)
            self.extra = extra
            return (deq.to(x.dtype), *args[1:])
        if self.vec_dot in ("F16", "BF16"):
            return (round_to(x, self.vec_dot), *args[1:])
        return None

    def post(self, module, args, out):
        if self.extra is None:
            return None
        extra, self.extra = self.extra, None
        return out + (extra @ self.mins.T).to(out.dtype)


def ggml_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """ggml's ``rms_norm`` then ``mul``: squares summed in double, ``1.0f / sqrtf(mean + eps)`` in
    float32, ``(x * scale) * w``. A last-bit difference here flips q8 roundings downstream."""
    xf = x.float()
    mean = ((xf * xf).double().sum(-1, keepdim=True) / x.shape[-1]).float()
    scale = 1.0 / torch.sqrt(mean + torch.tensor(eps, dtype=torch.float32))
    return ((xf * scale) * weight.float()).to(x.dtype)


def ggml_rope_tables(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``(B, T, dim)`` in transformers' rotate-half layout, with angles built as ggml builds
    them: ``theta_0 = p``, ``theta_{i+1} = theta_i * powf(base, -2/dim)``, all in float32."""
    scale = np.float32(np.power(np.float32(base), np.float32(-2.0 / dim), dtype=np.float32))
    p = positions.to(torch.float32)
    cols = [p]
    for _ in range(dim // 2 - 1):
        cols.append(cols[-1] * float(scale))  # a float32 tensor times a Python float stays float32
    theta = torch.stack(cols, dim=-1)  # (B, T, dim/2)
    theta = torch.cat([theta, theta], dim=-1)
    return theta.cos(), theta.sin()


@dataclass
class LlamaCppProfile:
    """llama.cpp's CPU arithmetic attached to a transformers causal LM.

    Parameters
    ----------
    weight_types : ggml type per Linear module name (``model.layers.0.self_attn.q_proj`` →
        ``Q4_1``); modules not listed are F32 (no conversion of their inputs)
    flash_attn : emulate the flash-attention kernel instead of mul_mat + soft_max
    parts : which parts of the arithmetic to emulate (all by default; subsets measure how much
        each contributes): ``matmul`` (activation conversion), ``norm`` (ggml's RMSNorm rounding),
        ``cache`` (f16 K/V), ``attention``
        (query conversion, f16 probabilities or f16 accumulation), ``rope`` (ggml's angles)
    """

    weight_types: dict[str, str] = field(default_factory=dict)
    flash_attn: bool = False
    parts: tuple[str, ...] = PARTS
    name = "llama.cpp"

    def __post_init__(self):
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown llama.cpp profile parts {sorted(unknown)}; choose from {PARTS}")

    def describe(self) -> dict:
        kinds = sorted(set(self.weight_types.values()))
        return {"engine": self.name, "flash_attn": self.flash_attn, "weight_types": kinds,
                "parts": list(self.parts)}

    def install(self, model) -> list:
        """Hooks on ``model`` (returned, so that they can be removed)."""
        handles = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "matmul" in self.parts:
                hook = _LinearHook(module, self.weight_types.get(name, "F32"))
                if hook.vec_dot != "F32":
                    handles.append(module.register_forward_pre_hook(hook.pre))
                    handles.append(module.register_forward_hook(hook.post))
            if hasattr(module, "layer_idx") and hasattr(module, "o_proj"):
                module.kvfp_engine = self
        if "norm" in self.parts:
            for module in model.modules():
                if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
                    handles.append(module.register_forward_hook(
                        lambda m, args, out: ggml_rms_norm(args[0], m.weight, m.variance_epsilon)))
        rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
        if rotary is not None and "rope" in self.parts:
            dim = rotary.inv_freq.shape[0] * 2
            base = float(getattr(model.config, "rope_theta", None) or
                         (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta", 10000.0))

            def rope(module, args, kwargs, out):
                x = args[0] if args else kwargs["x"]
                pos = args[1] if len(args) > 1 else kwargs["position_ids"]
                cos, sin = ggml_rope_tables(pos, dim, base)
                scaling = getattr(module, "attention_scaling", 1.0)
                return (cos * scaling).to(x.dtype), (sin * scaling).to(x.dtype)

            handles.append(rotary.register_forward_hook(rope, with_kwargs=True))
        return handles

    @staticmethod
    def uninstall(model, handles) -> None:
        for h in handles:
            h.remove()
        for module in model.modules():
            if hasattr(module, "kvfp_engine"):
                del module.kvfp_engine

    # -- attention ----------------------------------------------------------------------------

    def attention(self, query, key, value, additive, scaling, k_type: str = "F16", v_type: str = "F16"):
        """Attention as ggml computes it over the cache's K/V.

        query ``(B, H, q, D)`` float32 after RoPE; key/value ``(B, Hkv, S, D)`` as read from the
        cache (quantized caches already decoded); additive mask broadcastable to ``(B, H, q, S)``.
        ``k_type``/``v_type`` are the cache's ggml types. Returns ``(B, q, H, D)`` and the
        probabilities ``(B, H, q, S)``.
        """
        if "cache" in self.parts:
            if k_type == "F16":
                key = key.half().to(query.dtype)
            if v_type == "F16":
                value = value.half().to(query.dtype)
        exact = "attention" not in self.parts
        q = query if exact else round_to(query, VEC_DOT.get(k_type, "F16"))
        groups = q.shape[1] // key.shape[1]
        k = key.repeat_interleave(groups, dim=1)
        v = value.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling + additive
        probs = torch.softmax(scores.float(), dim=-1)
        if exact:
            out = torch.matmul(probs.to(v.dtype), v)
        elif self.flash_attn:
            out = torch.matmul(probs.to(v.dtype), v)
            if v_type == "F16":
                out = out.half().to(v.dtype)
        else:
            out = torch.matmul(probs.half().to(v.dtype), v)
        return out.transpose(1, 2).contiguous(), probs.to(query.dtype)
