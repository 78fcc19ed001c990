"""Which implementation runs a kernel-backed operation: Triton on CUDA, the PyTorch reference
elsewhere.

``auto`` (the default) runs Triton when every tensor involved is on CUDA and ``triton`` imports;
``KVFP_KERNELS=auto|triton|reference`` or ``with backend("triton"):`` forces a path. Forcing
Triton on CPU tensors runs the kernels in Triton's interpreter, which needs ``TRITON_INTERPRET=1``
set before the kernel modules are imported; they are imported here lazily, on first use, so that
importing kvfp never decorates a kernel.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from kvfp.errors import KvfpError
from kvfp.kernels import pack as pack_ref
from kvfp.kernels import quant_layout, quant_ref, scores_ref
from kvfp.kernels.decode_attention_ref import decode_attention_ref
from kvfp.kernels.quant_layout import QuantLayout, QuantTensor

ENV = "KVFP_KERNELS"
BACKENDS = ("auto", "triton", "reference")
_forced: ContextVar[str | None] = ContextVar("kvfp_kernels_backend", default=None)


def _check(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise KvfpError(f"{where}: unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}", exit_code=2)
    return name


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Force ``"triton"``, ``"reference"`` or ``"auto"`` inside the block (overrides ``KVFP_KERNELS``)."""
    token = _forced.set(_check(name, "kvfp.kernels.dispatch.backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def current() -> str:
    """The backend setting in force: the innermost :func:`backend`, else ``KVFP_KERNELS``, else auto."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return _check(os.environ.get(ENV, "auto").strip().lower() or "auto", f"environment variable {ENV}")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether an operation on ``tensors`` runs its Triton kernel under the current setting."""
    mode = current()
    if mode == "reference":
        return False
    real = [t for t in tensors if t is not None]
    on_cuda = all(t.is_cuda for t in real)
    if mode == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise KvfpError(f"{ENV}=triton, but triton cannot be imported on this machine")
    if not on_cuda and not interpreting():
        raise KvfpError(f"{ENV}=triton on CPU tensors needs TRITON_INTERPRET=1 set before kvfp's kernels are imported")
    return True


def _kernels(name: str):
    """The Triton module ``kvfp.kernels.<name>``, imported on first use."""
    return importlib.import_module(f"kvfp.kernels.{name}")


# -- packing and quantization ---------------------------------------------------------------------


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if use_triton(codes):
        return _kernels("pack_triton").pack_codes(codes, bits)
    return pack_ref.pack_codes(codes, bits)


def unpack_codes(packed: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    if use_triton(packed):
        return _kernels("pack_triton").unpack_codes(packed, bits, signed)
    return pack_ref.unpack_codes(packed, bits, signed)


def quantize(x: torch.Tensor, layout: QuantLayout, pack: bool = False):
    """Codes (packed along head_dim with ``pack``), scale, minimum of ``x`` ``(…, T, D)``; see
    :func:`kvfp.kernels.quant_layout.quantize`."""
    if use_triton(x):
        return _kernels("quant_triton").quantize(x, layout, pack)
    codes, scale, mn = quant_layout.quantize(x, layout)
    return (pack_ref.pack_codes(codes, layout.bits) if pack else codes), scale, mn


def dequantize(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor | None, layout: QuantLayout,
               dtype: torch.dtype, packed: bool = False) -> torch.Tensor:
    """Inverse of :func:`quantize`."""
    if use_triton(codes, scale, mn):
        return _kernels("quant_triton").dequantize(codes, scale, mn, layout, dtype, packed)
    if packed:
        codes = pack_ref.unpack_codes(codes, layout.bits, signed=not layout.zero_point)
    return quant_layout.dequantize(codes, scale, mn, layout, dtype)


def quantize_packed(x: torch.Tensor, layout: QuantLayout) -> QuantTensor:
    """``x`` ``(B, H, T, D)`` as a :class:`QuantTensor` (codes packed along head_dim)."""
    codes, scale, mn = quantize(x, layout, pack=True)
    return QuantTensor(codes, scale, mn, layout, x.shape[-1])


def dequantize_packed(t: QuantTensor, dtype: torch.dtype) -> torch.Tensor:
    return dequantize(t.codes, t.scale, t.mn, t.layout, dtype, packed=True)


def quantize_fp8(x: torch.Tensor, fmt: str, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """See :func:`kvfp.kernels.quant_ref.quantize_fp8`; the Triton path takes one scale per row."""
    if use_triton(x, scale if torch.is_tensor(scale) else None):
        return _kernels("quant_triton").quantize_fp8(x, fmt, scale)
    return quant_ref.quantize_fp8(x, fmt, scale)


def dequantize_fp8(codes: torch.Tensor, fmt: str, scale: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    if use_triton(codes, scale if torch.is_tensor(scale) else None):
        return _kernels("quant_triton").dequantize_fp8(codes, fmt, scale, dtype)
    return quant_ref.dequantize_fp8(codes, fmt, scale, dtype)


# -- attention and scores --------------------------------------------------------------------------


def decode_attention(q: torch.Tensor, k: QuantTensor, v: QuantTensor, k_res: torch.Tensor | None = None,
                     v_res: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                     scaling: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Decode attention over a quantized cache plus a full-precision residual window; see
    :func:`kvfp.kernels.decode_attention_ref.decode_attention_ref`. ``num_splits`` (Triton only)
    overrides how many programs share the quantized sequence of each KV head."""
    if use_triton(q, k.codes, v.codes, k_res, v_res, valid):
        return _kernels("decode_attention_triton").decode_attention(q, k, v, k_res, v_res, valid, scaling,
                                                                   num_splits)
    return decode_attention_ref(q, k, v, k_res, v_res, valid, scaling)


def h2o_accumulate(prev: torch.Tensor | None, probs: torch.Tensor, n_kv: int) -> torch.Tensor:
    """See :func:`kvfp.kernels.scores_ref.h2o_accumulate`."""
    if use_triton(prev, probs):
        return _kernels("scores_triton").h2o_accumulate(prev, probs, n_kv)
    return scores_ref.h2o_accumulate(prev, probs, n_kv)


def snapkv_votes(probs: torch.Tensor, n_kv: int, window: int, kernel: int) -> torch.Tensor:
    """See :func:`kvfp.kernels.scores_ref.snapkv_votes`."""
    if use_triton(probs):
        return _kernels("scores_triton").snapkv_votes(probs, n_kv, window, kernel)
    return scores_ref.snapkv_votes(probs, n_kv, window, kernel)
