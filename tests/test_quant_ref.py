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


# -- asymmetric, clipped, level-set and floating-point references ------------------------------

from kvfp.kernels.quant_ref import (  # noqa: E402
    E2M1_GRID,
    dequantize_asymmetric,
    dequantize_asymmetric_flat_groups,
    dequantize_asymmetric_groups,
    dequantize_fp4_e2m1,
    dequantize_fp8,
    dequantize_levels,
    log_levels,
    mse_clip,
    quantize_asymmetric,
    quantize_asymmetric_flat_groups,
    quantize_asymmetric_groups,
    quantize_fp4_e2m1,
    quantize_fp8,
    quantize_symmetric_clipped,
    quantize_to_levels,
)


def _awkward(seed=0, shape=(2, 3, 63, 32)):
    torch.manual_seed(seed)
    return torch.randn(*shape) * torch.rand(*shape[:-1], 1) * 4 + torch.rand(*shape[:-1], 1)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_asymmetric_error_within_half_a_step_and_range_endpoints_exact(bits):
    x = _awkward()
    codes, scale, mn = quantize_asymmetric(x, bits)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    err = (dequantize_asymmetric(codes, scale, mn, torch.float32) - x).abs()
    assert (err <= scale / 2 + 1e-5).all()
    for pick in (x.argmin(-1, keepdim=True), x.argmax(-1, keepdim=True)):
        assert err.gather(-1, pick).max() < 1e-5


@pytest.mark.parametrize("bits, group", [(4, 8), (2, 16), (8, 32)])
def test_asymmetric_groups_have_one_range_per_group(bits, group):
    x = _awkward(1)
    codes, scale, mn = quantize_asymmetric_groups(x, bits, group)
    assert scale.shape == (*x.shape[:-1], 32 // group)
    xg = x.view(*x.shape[:-1], 32 // group, group)
    assert torch.allclose(mn, xg.amin(-1))
    err = (dequantize_asymmetric_groups(codes, scale, mn, torch.float32) - x).view_as(xg).abs()
    assert (err <= scale.unsqueeze(-1) / 2 + 1e-5).all()
    with pytest.raises(ValueError, match="does not divide"):
        quantize_asymmetric_groups(x, bits, 24)


@pytest.mark.parametrize("shape, group", [((2, 2, 7, 32), 64), ((1, 2, 5, 32), 16), ((1, 1, 3, 32), 64)])
def test_flat_groups_follow_memory_order(shape, group):
    """optimum-quanto's axis-0 grouping: consecutive elements of each batch row in memory order."""
    x = _awkward(2, shape)
    codes, scale, mn = quantize_asymmetric_flat_groups(x, 4, group)
    flat = x.reshape(shape[0], -1)
    n = flat.shape[1]
    assert scale.shape == (shape[0], -(-n // group))
    for g in range(scale.shape[1]):
        assert torch.allclose(mn[:, g], flat[:, g * group:(g + 1) * group].amin(-1))
    err = (dequantize_asymmetric_flat_groups(codes, scale, mn, group, torch.float32) - x).abs()
    per_elem = scale.repeat_interleave(group, 1)[:, :n].view(shape)
    assert (err <= per_elem / 2 + 1e-5).all()


def test_clipped_codes_saturate_and_mse_clip_never_loses_to_absmax():
    x = _awkward(3)
    amax = x.abs().amax(-1, keepdim=True)
    codes, scale = quantize_symmetric_clipped(x, 4, amax * 0.5)
    deq = codes.float() * scale
    inside = x.abs() <= 7 * scale
    assert ((deq - x).abs()[inside] <= (scale / 2 + 1e-6).expand_as(x)[inside]).all()
    assert torch.allclose(deq[~inside].abs(), (7 * scale).expand_as(x)[~inside])
    clip = mse_clip(x, 4, (1.0, 0.9, 0.8, 0.7))

    def sq_err(c):
        q, s = quantize_symmetric_clipped(x, 4, c)
        return ((q.float() * s - x) ** 2).sum(-1)

    assert (sq_err(clip) <= sq_err(amax) + 1e-6).all()
    assert (clip < amax).any()  # some token prefers a clipped range


def test_levels_round_to_nearest():
    lv = log_levels(4, 2)
    assert lv.numel() == 15 and torch.equal(lv, lv.sort().values)
    assert torch.allclose(lv[8:], torch.tensor([2 ** (-k / 2) for k in range(7)]).flip(0))
    z = torch.linspace(-1, 1, 1001)
    deq = dequantize_levels(quantize_to_levels(z, lv), lv)
    assert torch.allclose((deq - z).abs(), (z[:, None] - lv[None]).abs().amin(-1))


@pytest.mark.parametrize("fmt, dt", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_fp8_round_trip_equals_torch_cast(fmt, dt):
    x = _awkward(4) * 30
    assert torch.equal(dequantize_fp8(quantize_fp8(x, fmt), fmt, 1.0, torch.float32), x.to(dt).float())
    fmax = torch.finfo(dt).max
    big = torch.tensor([1e6, -1e6])
    assert torch.equal(dequantize_fp8(quantize_fp8(big, fmt), fmt, 1.0, torch.float32), torch.tensor([fmax, -fmax]))
    scale = torch.tensor(0.01)
    assert torch.equal(dequantize_fp8(quantize_fp8(x, fmt, scale), fmt, scale, torch.float32),
                       (x / scale).clamp(-fmax, fmax).to(dt).float() * scale)


def test_fp4_e2m1_values_on_grid_within_half_a_spacing():
    x = _awkward(5)
    codes, scales = quantize_fp4_e2m1(x, 16)
    assert codes.shape == x.shape and scales.shape == (*x.shape[:-1], 2) and scales.dtype == torch.uint8
    s = scales.view(torch.float8_e4m3fn).float()
    assert torch.equal(s, (x.view(*x.shape[:-1], 2, 16).abs().amax(-1) / 6).to(torch.float8_e4m3fn).float())
    deq = dequantize_fp4_e2m1(codes, scales, torch.float32).view(*x.shape[:-1], 2, 16)
    a = deq.abs() / s.unsqueeze(-1)
    grid = torch.tensor(E2M1_GRID)
    assert ((a[..., None] - grid).abs().amin(-1) < 1e-6).all()
    # nearest grid value of the clamped ratio: the error is at most half the local spacing
    r = (x.view_as(deq).abs() / s.unsqueeze(-1)).clamp(max=6)
    nearest = (r[..., None] - grid).abs().amin(-1)
    assert torch.allclose((a - r).abs(), nearest, atol=1e-5)
    assert (nearest <= 1.0 + 1e-6).all()  # the largest half-spacing (between 4 and 6)
