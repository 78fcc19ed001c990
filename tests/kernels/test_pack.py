"""Bit packing: the reference layout, and the Triton kernels against it (bytes identical)."""

import pytest
import torch

from kvfp.kernels import dispatch
from kvfp.kernels.pack import pack_codes, unpack_codes


def random_codes(bits: int, signed: bool, shape=(2, 3, 63, 80)) -> torch.Tensor:
    g = torch.Generator().manual_seed(bits)
    if signed:
        q = 2 ** (bits - 1) - 1
        return torch.randint(-q, q + 1, shape, generator=g).to(torch.int8)
    return torch.randint(0, 2**bits, shape, generator=g).to(torch.uint8)


def test_reference_layout_low_bits_first():
    codes = torch.tensor([[1, 2, 3, 0, 3, 3, 0, 1]], dtype=torch.uint8)
    assert pack_codes(codes, 2).tolist() == [[1 | 2 << 2 | 3 << 4, 3 | 3 << 2 | 1 << 6]]
    signed = torch.tensor([[-7, 7, -1, 0]], dtype=torch.int8)  # 4-bit two's complement: 9, 7, 15, 0
    assert pack_codes(signed, 4).tolist() == [[9 | 7 << 4, 15]]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_reference_round_trip(bits, signed):
    codes = random_codes(bits, signed)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 63, 80 * bits // 8)
    back = unpack_codes(packed, bits, signed)
    assert back.dtype == codes.dtype and torch.equal(back, codes)


def test_rows_that_do_not_fill_bytes_are_refused():
    with pytest.raises(ValueError, match="whole bytes"):
        pack_codes(torch.zeros(3, 6, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="pack at"):
        pack_codes(torch.zeros(3, 6, dtype=torch.uint8), 3)


@pytest.mark.triton
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_kernels_match_the_reference(bits, signed, device):
    codes = random_codes(bits, signed).to(device)
    ref = pack_codes(codes, bits)
    with dispatch.backend("triton"):
        packed = dispatch.pack_codes(codes, bits)
        back = dispatch.unpack_codes(ref, bits, signed)
    assert torch.equal(packed, ref)
    assert back.dtype == codes.dtype and torch.equal(back, codes)
