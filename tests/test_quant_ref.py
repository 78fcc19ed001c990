import pytest
import torch

from kvfp.kernels import dequantize_symmetric, quantize_symmetric


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_per_token_error_within_half_a_step(bits):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 63, 80) * torch.rand(2, 3, 63, 1) * 5
    codes, scale = quantize_symmetric(x, bits)
    qmax = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and scale.shape == (2, 3, 63, 1)
    assert codes.abs().max() <= qmax
    err = (dequantize_symmetric(codes, scale, torch.float32) - x).abs()
    assert (err <= scale / 2 + 1e-6).all()
    # the largest magnitude of every token is represented exactly (up to float rounding)
    amax_idx = x.abs().argmax(-1, keepdim=True)
    assert torch.allclose(err.gather(-1, amax_idx), torch.zeros(1), atol=1e-5)


def test_zero_rows_and_bad_bits():
    codes, scale = quantize_symmetric(torch.zeros(1, 1, 2, 4), 8)
    assert (codes == 0).all() and (scale == 1).all()
    with pytest.raises(ValueError):
        quantize_symmetric(torch.zeros(1, 4), 9)


def test_outlier_channel_hurts_per_token_scales():
    """One large channel sets every token's scale: the other channels lose resolution."""
    torch.manual_seed(1)
    x = torch.randn(1, 1, 64, 32)
    x[..., 5] *= 50
    codes, scale = quantize_symmetric(x, 4)
    err = (dequantize_symmetric(codes, scale, torch.float32) - x).abs()
    clean = x.clone()
    clean[..., 5] /= 50
    c2, s2 = quantize_symmetric(clean, 4)
    err_clean = (dequantize_symmetric(c2, s2, torch.float32) - clean).abs()
    others = [c for c in range(32) if c != 5]
    assert err[..., others].mean() > 5 * err_clean[..., others].mean()
