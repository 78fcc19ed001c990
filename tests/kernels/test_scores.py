"""Attention-score accumulation for eviction: the references against the papers' definitions
written as plain loops, and the Triton kernels against the references.

Tolerance: 1e-5 relative / 1e-6 absolute (float32 sums in another order).
"""

import pytest
import torch

from kvfp.kernels import dispatch
from kvfp.kernels.scores_ref import h2o_accumulate, snapkv_votes

B, H, HKV, Q, S = 2, 9, 3, 7, 63


def attention(q=Q, s=S, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, H, q, s, generator=g) * 3, -1).to(dtype)


def test_h2o_reference_sums_queries_and_group_heads():
    probs = attention()
    prev = torch.rand(B, HKV, S - 4)
    out = h2o_accumulate(prev, probs, HKV)
    b, kv, t = 1, 2, 5
    assert torch.isclose(out[b, kv, t], prev[b, kv, t] + sum(probs[b, h, :, t].sum() for h in (6, 7, 8)))
    t = S - 2  # appended after prev was written: starts from 0
    assert torch.isclose(out[b, kv, t], sum(probs[b, h, :, t].sum() for h in (6, 7, 8)))


def test_snapkv_reference_pools_the_window_votes():
    probs = attention(q=S)
    window, kernel = 5, 5
    out = snapkv_votes(probs, HKV, window, kernel)
    P = S - window
    raw = torch.stack([probs[:, 3 * k: 3 * k + 3, -window:, :P].sum(2).mean(1) for k in range(HKV)], 1)  # (B, Hkv, P)
    for p in (0, 1, 30, P - 1):
        taps = [raw[..., j] for j in range(p - 2, p + 3) if 0 <= j < P]
        assert torch.allclose(out[..., p], sum(taps) / kernel)  # zero padding counts in the mean


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("prev_len", [None, S - 4, S], ids=["first", "grown", "same"])
def test_h2o_kernel_matches_the_reference(prev_len, dtype, device):
    probs = attention(dtype=dtype).to(device)
    prev = None if prev_len is None else torch.rand(B, HKV, prev_len).to(device)
    with dispatch.backend("triton"):
        out = dispatch.h2o_accumulate(prev, probs, HKV)
    assert out.dtype == torch.float32 and close(out, h2o_accumulate(prev, probs, HKV))


@pytest.mark.triton
@pytest.mark.parametrize("window, kernel", [(8, 5), (5, 7), (8, 1), (63, 5)])
def test_snapkv_kernel_matches_the_reference(window, kernel, device):
    probs = attention(q=S).to(device)
    with dispatch.backend("triton"):
        out = dispatch.snapkv_votes(probs, HKV, window, kernel)
    ref = snapkv_votes(probs, HKV, window, kernel)
    assert out.shape == ref.shape == (B, HKV, S - window) and close(out, ref)


@pytest.mark.triton
def test_non_contiguous_probabilities(device):
    """The eager attention hands over a view: the kernels read it by its strides."""
    probs = attention(q=S, s=S + 3).to(device)[..., :S]
    with dispatch.backend("triton"):
        h2o = dispatch.h2o_accumulate(None, probs, HKV)
        snap = dispatch.snapkv_votes(probs, HKV, 8, 5)
    assert close(h2o, h2o_accumulate(None, probs, HKV)) and close(snap, snapkv_votes(probs, HKV, 8, 5))
