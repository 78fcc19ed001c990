"""Hot-path numerics of the runner: PyTorch references (the specification) and, on CUDA, Triton
kernels dispatched in their place."""

from kvfp.kernels.quant_ref import dequantize_symmetric, quantize_symmetric

__all__ = ["quantize_symmetric", "dequantize_symmetric"]
