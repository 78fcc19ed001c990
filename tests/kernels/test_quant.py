"""Triton quantize / dequantize / FP8 kernels against their references.

Tolerances: none. Codes, scales and minima are identical to the reference (round half to even,
IEEE division), and so is dequantization (no fused multiply-add), so every comparison is exact.
"""

import pytest
import torch

from kvfp.kernels import dispatch
from kvfp.kernels.pack import pack_codes
from kvfp.kernels.quant_layout import QuantLayout, dequantize, quantize, quantize_packed
from kvfp.kernels.quant_ref import FP8_DTYPES, dequantize_fp8, quantize_fp8, quantize_symmetric

LAYOUTS = {
    "int8-pertoken": QuantLayout.per_token(8),
    "int4-pertoken": QuantLayout.per_token(4),
    "int2-pertoken": QuantLayout.per_token(2),
    "int4-pertoken-zp": QuantLayout.per_token(4, zero_point=True),
    "int3-pertoken-zp": QuantLayout.per_token(3, zero_point=True),
    "int4-group16-zp": QuantLayout.channel_groups(4, 16),
    "int2-group16-sym": QuantLayout.channel_groups(2, 16, zero_point=False),
    "kivi2-keys-t32": QuantLayout.channel_blocks(2, 32),
    "int4-perchannel-t16": QuantLayout.channel_blocks(4, 16),
    "int8-perchannel-t8-sym": QuantLayout.channel_blocks(8, 8, zero_point=False),
}


def awkward(dtype=torch.float32, tokens=64) -> torch.Tensor:
    """``(2, 3, tokens, 80)`` with token scales spread over two decades, plus rows that hit the
    edge cases: all zeros, constant, and exact ties (halves after division by the scale)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, tokens, 80, generator=g) * torch.rand(2, 3, tokens, 1, generator=g).mul(10).add(0.1)
    x[0, 0, 0] = 0.0
    x[0, 0, 1] = -1.25
    ties = torch.arange(80, dtype=torch.float32) % 8 - 3.5  # halves; scale 1 at 8 bits with ±127 in the row
    ties[0], ties[1] = 127.0, -127.0
    x[0, 1, 2] = ties
    x[1, 2, 3] = torch.arange(80, dtype=torch.float32) % 16 + 0.5  # zero point 0.5, scale 1 at 4 bits
    return x.to(dtype)


# only 2, 4 and 8-bit codes pack
CASES = [(n, pack) for n, lay in LAYOUTS.items() for pack in (False, True) if not pack or lay.bits in (2, 4, 8)]


@pytest.mark.triton
@pytest.mark.parametrize("name, pack", CASES, ids=[f"{n}-{'packed' if p else 'unpacked'}" for n, p in CASES])
def test_quantize_and_dequantize_match_the_reference(name, pack, device):
    layout = LAYOUTS[name]
    x = awkward(tokens=63 if layout.token_group == 1 else 64).to(device)
    codes, scale, mn = quantize(x, layout)
    with dispatch.backend("triton"):
        k_codes, k_scale, k_mn = dispatch.quantize(x, layout, pack=pack)
        k_dec = dispatch.dequantize(k_codes, k_scale, k_mn, layout, torch.float32, packed=pack)
    want = pack_codes(codes, layout.bits) if pack else codes
    assert k_codes.dtype == want.dtype and torch.equal(k_codes, want)
    assert torch.equal(k_scale, scale)
    assert (k_mn is None) == (mn is None) and (mn is None or torch.equal(k_mn, mn))
    assert torch.equal(k_dec, dequantize(codes, scale, mn, layout, torch.float32))


@pytest.mark.triton
@pytest.mark.parametrize("name", ["int4-pertoken", "int4-group16-zp", "kivi2-keys-t32"])
def test_half_precision_inputs_and_outputs(name, device):
    layout = LAYOUTS[name]
    x = awkward(torch.float16, tokens=63 if layout.token_group == 1 else 64).to(device)
    t = quantize_packed(x, layout)
    with dispatch.backend("triton"):
        k = dispatch.quantize_packed(x, layout)
        dec = dispatch.dequantize_packed(k, torch.float16)
    assert torch.equal(k.codes, t.codes) and torch.equal(k.scale, t.scale)
    assert dec.dtype == torch.float16 and torch.equal(dec, t.dequantize(torch.float16))


@pytest.mark.triton
@pytest.mark.parametrize("layout, access", [
    (QuantLayout.channel_groups(4, 16), "GROUPS"),  # head_dim 64: each token's 4 scales broadcast
    (QuantLayout.channel_blocks(2, 64), "ROW"),  # a 64-token tile sits inside one block
    (QuantLayout.channel_blocks(2, 32), "GATHER"),
], ids=["groups", "row", "gather"])
def test_every_way_of_reading_scales(layout, access, device):
    """Head_dim 64 (a power of two) reaches the scale reads that head_dim 80 cannot."""
    from kvfp.kernels import quant_triton

    x = awkward(tokens=128)[..., :64].contiguous().to(device)
    block_t = quant_triton.row_block(64)
    assert quant_triton.scale_access(layout.token_group, layout.channel_group or 64, 64, block_t) == getattr(
        quant_triton, access)
    codes, scale, mn = quantize(x, layout)
    with dispatch.backend("triton"):
        dec = dispatch.dequantize(pack_codes(codes, layout.bits), scale, mn, layout, torch.float32, packed=True)
    assert torch.equal(dec, dequantize(codes, scale, mn, layout, torch.float32))


def test_layouts_reproduce_the_scheme_references():
    """The per-token layout is quantize_symmetric exactly, so routing the codecs changes no code."""
    x = awkward()
    codes, scale, mn = quantize(x, LAYOUTS["int4-pertoken"])
    ref_codes, ref_scale = quantize_symmetric(x, 4)
    assert mn is None and torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
    # per-channel blocks: every block of 16 tokens has its own range per channel
    codes, scale, mn = quantize(x, LAYOUTS["int4-perchannel-t16"])
    assert scale.shape == (2, 3, 4, 80)
    block = x[1, 2, 16:32]
    assert torch.equal(mn[1, 2, 1], block.amin(0))
    assert torch.allclose(scale[1, 2, 1], (block.amax(0) - block.amin(0)) / 15)


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="one channel wide"):
        QuantLayout(4, True, 32, 8)
    with pytest.raises(ValueError, match="does not divide head_dim 80"):
        quantize(awkward(), QuantLayout.channel_groups(4, 32))
    with pytest.raises(ValueError, match="does not divide the 63 tokens"):
        quantize(awkward(tokens=63), QuantLayout.channel_blocks(4, 32))


def fp8_probe(fmt: str) -> torch.Tensor:
    """Every finite FP8 value, every midpoint between neighbours (ties), ±0, tiny and huge
    values, and random ones: ``(N, 80)``."""
    vals = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPES[fmt]).float()
    vals = vals[torch.isfinite(vals)].sort().values
    mids = (vals[1:] + vals[:-1]) / 2
    g = torch.Generator().manual_seed(1)
    extra = torch.tensor([0.0, -0.0, 1e9, -1e9, 1e-30, -1e-30])
    x = torch.cat([vals, mids, extra, torch.randn(2000, generator=g) * 30, torch.randn(2000, generator=g) * 1e-3])
    n = x.numel() // 80 * 80
    return x[:n].view(-1, 80)


@pytest.mark.triton
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_cast_with_scale_matches_the_reference(fmt, device):
    x = fp8_probe(fmt).to(device)
    scale = torch.where(torch.arange(x.shape[0]) % 3 == 0, 1.0, 0.37).view(-1, 1).to(device)  # per-row scales
    with dispatch.backend("triton"):
        codes = dispatch.quantize_fp8(x, fmt, scale)
        dec = dispatch.dequantize_fp8(codes, fmt, scale, torch.float32)
        unit = dispatch.quantize_fp8(x, fmt)
    assert torch.equal(codes, quantize_fp8(x, fmt, scale))
    assert torch.equal(unit, quantize_fp8(x, fmt))
    assert torch.equal(dec, dequantize_fp8(codes, fmt, scale, torch.float32))
