"""Calibration data for calibrated schemes (low rank, latent, KVQuant levels, per-head FP8 scales…).

Calibration runs the uncompressed model over the held-out *calibration* files (never used by a
probe; see ``kvfp.models.corpus``) and captures every layer's keys (pre- and post-RoPE) and values.
Schemes fit what they need from these and store the result with :func:`cached_fit`, keyed by the
model's weights and the scheme's name, so every run of a scheme uses the same calibration.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

from kvfp.compressors.rope import rope_cos_sin, undo_rope
from kvfp.paths import cache_root

CALIBRATION_VERSION = 2  # 2: K/V always captured with eager attention
CALIB_WINDOWS, CALIB_LEN = 4, 1024

_memory: dict[tuple, object] = {}


def cache_dir() -> Path:
    return cache_root() / "calibration"


def model_fingerprint(model) -> str:
    """A hash of the model's weights (sampled, so it is cheap on large models) and config."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _tokenizer_for(model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.name_or_path)


def calibration_windows(model, tokenizer=None) -> list[list[int]]:
    """``CALIB_WINDOWS`` BOS-prefixed windows of ``CALIB_LEN`` calibration-text token ids: the
    input every calibration runs the model on."""
    from kvfp.models.corpus import calibration_text

    tok = tokenizer or _tokenizer_for(model)
    ids = tok(calibration_text(), add_special_tokens=False, verbose=False)["input_ids"]
    body = CALIB_LEN - 1
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return [(bos + ids[i * body:(i + 1) * body])[:CALIB_LEN] for i in range(CALIB_WINDOWS)]


@torch.no_grad()
def capture_kv(model, tokenizer=None) -> list[dict[str, torch.Tensor]]:
    """Per layer: ``k_pre``, ``k`` (post-RoPE) and ``v``, each ``(N, Hkv, T, D)`` float32 on CPU,
    over ``CALIB_WINDOWS`` BOS-prefixed windows of ``CALIB_LEN`` calibration tokens.

    The forward pass always uses eager attention: the calibration cache is keyed by the weights,
    and sdpa's K/V differ from eager's in the last bits after the first layer, so a model loaded
    with sdpa would otherwise calibrate a scheme slightly differently from the same weights
    loaded with eager, depending on which filled the cache first."""
    key = ("kv", id(model), model_fingerprint(model))
    if key in _memory:
        return _memory[key]
    x = torch.tensor(calibration_windows(model, tokenizer), device=model.device)
    positions = torch.arange(x.shape[1], device=model.device).expand(x.shape[0], -1)
    cache = DynamicCache(config=model.config)
    prev = model.config._attn_implementation
    if prev != "eager":
        model.set_attn_implementation("eager")
    try:
        model(input_ids=x, position_ids=positions, cache=cache, use_cache=True)
    finally:
        if prev != "eager":
            model.set_attn_implementation(prev)
    rotary = model.model.rotary_emb
    out = []
    for layer in cache.layers:
        k, v = layer.keys.float(), layer.values.float()
        cos, sin = rope_cos_sin(rotary, k, positions)
        out.append({"k_pre": undo_rope(k, cos, sin).cpu(), "k": k.cpu(), "v": v.cpu()})
    _memory[key] = out
    return out


def _load_fit(path: Path) -> dict | None:
    """A cached fit, or ``None`` (recompute it) when the file is damaged or holds non-finite values."""
    try:
        result = load_file(str(path))
    except Exception:  # safetensors reports a damaged file in several exception types
        return None
    if not result or any(v.is_floating_point() and not torch.isfinite(v).all() for v in result.values()):
        return None
    return result


def cached_fit(model, scheme_name: str, fit: Callable[[list[dict]], dict[str, torch.Tensor]]) -> dict:
    """Load this scheme's calibration for this model, or compute it with ``fit`` and store it.

    ``fit`` receives :func:`capture_kv`'s output and returns named tensors (saved as safetensors:
    no code runs when a calibration is loaded).
    """
    fp = model_fingerprint(model)
    key = ("fit", fp, scheme_name)
    if key in _memory:
        return _memory[key]
    path = cache_dir() / fp / f"{scheme_name}.v{CALIBRATION_VERSION}.safetensors"
    result = _load_fit(path) if path.is_file() else None
    if result is None:
        result = {k: v.contiguous().cpu() for k, v in fit(capture_kv(model)).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(result, str(tmp))
        os.replace(tmp, path)  # concurrent runs each write whole files; the last rename wins
    _memory[key] = result
    return result
