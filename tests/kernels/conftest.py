"""Kernel tests run the Triton kernels in Triton's interpreter where there is no GPU.

``@triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so the flag is set here, before any
test imports a kernel module (kvfp imports them lazily, through its dispatcher, on first use).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from kvfp.kernels.dispatch import triton_available  # noqa: E402


@pytest.fixture(autouse=True)
def _needs_triton(request):
    if request.node.get_closest_marker("triton") and not triton_available():
        pytest.skip("triton is not installed on this platform")


@pytest.fixture(scope="session")
def device() -> str:
    """Where the kernel tests put their tensors: CUDA when there is one, else CPU (interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
