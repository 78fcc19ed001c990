"""Fused decode attention over a quantized cache: the reference against plain attention, and the
Triton kernel against the reference.

Tolerances (max absolute error of outputs of magnitude ~1): float32 queries 1e-5 (only the order
of accumulation differs); float16 queries 4e-3 (probabilities are rounded to float16 for the
second product, as in flash attention, and the output to float16).
"""

import pytest
import torch
import torch.nn.functional as F

from kvfp.kernels import dispatch
from kvfp.kernels.decode_attention_ref import decode_attention_ref
from kvfp.kernels.quant_layout import QuantLayout, quantize_packed

B, H, HKV, D = 2, 9, 3, 80  # GQA group 3, head_dim 80
TOL = {torch.float32: 1e-5, torch.float16: 4e-3}

CACHES = {  # (keys, values, quantized tokens)
    "int8-pertoken": (QuantLayout.per_token(8), QuantLayout.per_token(8), 63),
    "int4-pertoken": (QuantLayout.per_token(4), QuantLayout.per_token(4), 63),
    "int2-pertoken": (QuantLayout.per_token(2), QuantLayout.per_token(2), 63),
    "int4-pertoken-zp": (QuantLayout.per_token(4, True), QuantLayout.per_token(4, True), 63),
    "kivi-4-g16": (QuantLayout.channel_blocks(4, 16), QuantLayout.channel_groups(4, 16), 64),
    "kivi-2-g32": (QuantLayout.channel_blocks(2, 32), QuantLayout.channel_groups(2, 16), 64),
    # head_dim 64: per-channel key scales read once per 32-token tile, value group scales broadcast
    "kivi-2-g32-d64": (QuantLayout.channel_blocks(2, 32), QuantLayout.channel_groups(2, 16), 64),
}


def make_cache(name, dtype, residual=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    k_layout, v_layout, s_q = CACHES[name]
    dim = 64 if name.endswith("-d64") else D
    k = torch.randn(B, HKV, s_q, dim, generator=g) * torch.rand(B, HKV, 1, dim, generator=g).mul(2).add(0.5)
    v = torch.randn(B, HKV, s_q, dim, generator=g)
    q = torch.randn(B, H, 1, dim, generator=g).to(dtype)
    kq, vq = quantize_packed(k, k_layout), quantize_packed(v, v_layout)
    kr = torch.randn(B, HKV, residual, dim, generator=g).to(dtype)
    vr = torch.randn(B, HKV, residual, dim, generator=g).to(dtype)
    to = lambda t: t.to(device)  # noqa: E731
    kq.codes, kq.scale = to(kq.codes), to(kq.scale)
    vq.codes, vq.scale = to(vq.codes), to(vq.scale)
    kq.mn = None if kq.mn is None else to(kq.mn)
    vq.mn = None if vq.mn is None else to(vq.mn)
    return to(q), kq, vq, to(kr), to(vr)


def test_reference_is_attention_over_the_dequantized_cache():
    q, kq, vq, kr, vr = make_cache("kivi-2-g32", torch.float32)
    keys = torch.cat([kq.dequantize(torch.float32), kr], 2)
    values = torch.cat([vq.dequantize(torch.float32), vr], 2)
    want = F.scaled_dot_product_attention(q, keys.repeat_interleave(3, 1), values.repeat_interleave(3, 1))
    assert torch.allclose(decode_attention_ref(q, kq, vq, kr, vr), want, atol=1e-6)
    # a masked entry is left out, as if it had never been stored
    valid = torch.ones(B, 1, keys.shape[2], dtype=torch.bool)
    valid[0, :, 7] = False
    keep = torch.arange(keys.shape[2]) != 7
    without = F.scaled_dot_product_attention(q[:1], keys[:1, :, keep].repeat_interleave(3, 1),
                                             values[:1, :, keep].repeat_interleave(3, 1))
    masked = decode_attention_ref(q, kq, vq, kr, vr, valid=valid)
    assert torch.allclose(masked[:1], without, atol=1e-6) and torch.allclose(masked[1:], want[1:], atol=1e-6)
    assert not torch.allclose(want[:1], without, atol=1e-4)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CACHES))
def test_kernel_matches_the_reference(name, dtype, device):
    q, kq, vq, kr, vr = make_cache(name, dtype, device=device)
    valid = (torch.rand(B, 1, kq.shape[2] + kr.shape[2], generator=torch.Generator().manual_seed(3)) > 0.2).to(device)
    for res, mask in [((None, None), None), ((kr, vr), None), ((kr, vr), valid)]:
        ref = decode_attention_ref(q, kq, vq, *res, valid=mask)
        with dispatch.backend("triton"):
            out = dispatch.decode_attention(q, kq, vq, *res, valid=mask, num_splits=3)
        assert out.dtype == dtype and out.shape == q.shape
        err = (out.float() - ref.float()).abs().max().item()
        assert err <= TOL[dtype], (res[0] is not None, mask is not None, err)


@pytest.mark.triton
def test_splits_and_residual_only(device):
    """Any number of splits gives the same answer; a cache of only residual entries works too."""
    q, kq, vq, kr, vr = make_cache("int4-pertoken", torch.float32, residual=17, device=device)
    ref = decode_attention_ref(q, kq, vq, kr, vr)
    with dispatch.backend("triton"):
        outs = [dispatch.decode_attention(q, kq, vq, kr, vr, num_splits=n) for n in (1, 4)]
        empty_k, empty_v = quantize_packed(kr[:, :, :0].float(), kq.layout), quantize_packed(vr[:, :, :0].float(),
                                                                                             vq.layout)
        only_res = dispatch.decode_attention(q, empty_k, empty_v, kr, vr)
    for out in outs:
        assert (out - ref).abs().max() <= TOL[torch.float32]
    want = F.scaled_dot_product_attention(q, kr.repeat_interleave(3, 1), vr.repeat_interleave(3, 1))
    assert (only_res - want).abs().max() <= TOL[torch.float32]


def test_mismatched_inputs_are_refused():
    q, kq, vq, kr, vr = make_cache("int4-pertoken", torch.float32)
    with pytest.raises(ValueError, match="one query"):
        decode_attention_ref(q.expand(B, H, 2, D), kq, vq)
    with pytest.raises(ValueError, match="residual window together"):
        decode_attention_ref(q, kq, vq, kr, None)
    with pytest.raises(ValueError, match="cannot share"):
        decode_attention_ref(q[:, :8], kq, vq)
