"""llama.cpp's cache types: ggml's block formats bit for bit against gguf-py (ggml's own Python
package), hand-worked blocks where gguf-py has no quantizer, the ``ggml-*`` and ``fp16`` names and
genes, byte counts, and the engine behaviour they mirror (prefill reads the cache)."""

import math

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GT

from kvfp.compressors import canonical_names, parse_scheme
from kvfp.compressors.codecs import GGMLBlocks, Half
from kvfp.compressors.layer import StepState
from kvfp.compressors.stored import StoredLayer
from kvfp.compressors.stores import CodecStore, ExactStore
from kvfp.errors import UnknownNameError
from kvfp.kernels import ggml_quants as gq
from kvfp.runner import generate, replay
from tests.conftest import prompt

LINEAR = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # the types gguf-py quantizes
SHAPES = [(3, 5, 96), (1, 1, 32), (2, 7, 64)]
F32 = np.float32


def _tie_block(qtype: str, rng) -> np.ndarray:
    """A block whose scale is a power of two, so that ``x * id`` (or ``(x - min) * id``) lands
    exactly on ``k + 0.5`` for most values: the rounding rule decides every one of them."""
    if qtype in ("q8_0", "q8_1"):
        x = (rng.integers(-127, 127, QK_) + 0.5) / 8  # d = 1/8
        x[rng.integers(QK_)] = -127 / 8
    elif qtype in ("q4_0", "q5_0"):
        half = 8 if qtype == "q4_0" else 16
        x = (rng.integers(-half, half - 1, QK_) + 0.5) / 4  # d = -max/half = -1/4 with max = half/4
        x[rng.integers(QK_)] = half / 4
    else:
        qmax = 15 if qtype == "q4_1" else 31
        x = -1.0 + (rng.integers(0, qmax, QK_) + 0.5) / 4  # d = (max - min)/qmax = 1/4
        x[0], x[1] = -1.0, -1.0 + qmax / 4
    return x.astype(F32)


QK_ = gq.QK


def awkward(shape, qtype: str, seed: int = 0) -> np.ndarray:
    """``shape`` float32 whose 32-blocks cycle through: gaussian, exact rounding ties, all zeros,
    1e4 beside 1e-3, a negative extreme, and values small enough for an fp16-subnormal scale."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(F32)
    blocks = x.reshape(-1, QK_)
    for i, b in enumerate(blocks):
        kind = i % 6
        if kind == 1:
            b[:] = _tie_block(qtype, rng)
        elif kind == 2:
            b[:] = 0.0
        elif kind == 3:
            b[:] = rng.standard_normal(QK_) * 1e-3
            b[rng.integers(QK_)] = 1e4
        elif kind == 4:
            b[:] = rng.uniform(-1, 1, QK_)
            b[rng.integers(QK_)] = -3.5
        elif kind == 5:
            b[:] = rng.standard_normal(QK_) * 2e-4
    return x


def same_blocks(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_awkward_blocks_really_are_awkward():
    x = awkward((2, 6, 32), "q8_0").reshape(-1, 32)
    d = gq.quantize(torch.from_numpy(x), "q8_0")["d"].float()
    assert d[2] == 0 and d[3] > 78  # zeros; the outlier's scale
    assert 0 < d[5] < 2.0**-14  # below fp16's smallest normal
    v = torch.from_numpy(x[1]) * 8
    assert (v - v.floor() == 0.5).sum() >= 30  # ties on the q8 grid


# -- bit-exact against gguf-py ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("qtype", LINEAR)
def test_codec_bytes_and_values_equal_gguf(qtype, shape):
    x = awkward(shape, qtype, seed=len(shape) + shape[-1])
    ref_raw = gguf.quants.quantize(x, GT[qtype.upper()])  # (…, D/32 * block bytes) uint8
    codec = GGMLBlocks(qtype)
    enc = codec.encode(torch.from_numpy(x))
    ours = gq.to_bytes(enc, qtype).numpy()
    assert ours.shape == ref_raw.shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref_raw)
    ref_val = gguf.quants.dequantize(ref_raw, GT[qtype.upper()])
    val = codec.decode(enc, torch.float32).numpy()
    np.testing.assert_array_equal(val.view(np.uint32), ref_val.astype(F32).view(np.uint32))  # -0.0 too
    assert same_blocks(gq.from_bytes(torch.from_numpy(ref_raw), qtype), enc)


@pytest.mark.parametrize("qtype", LINEAR)
def test_rounding_ties_follow_ggml(qtype):
    """On exact ties q8 rounds away from zero (``roundf``); the others add 0.5 (or 8.5, 16.5) and
    truncate, i.e. round half up in code space."""
    rng = np.random.default_rng(3)
    x = _tie_block(qtype, rng)[None]
    enc = gq.quantize(torch.from_numpy(x), qtype)
    d = float(enc["d"][0, 0])
    if qtype == "q8_0":
        v = x[0] / d
        expect = np.sign(v) * np.floor(np.abs(v) + 0.5)
        assert (np.abs(v - np.trunc(v)) == 0.5).sum() >= 30
        np.testing.assert_array_equal(enc["codes"][0].numpy(), expect)
        assert not np.array_equal(expect, np.round(v))  # numpy/torch would round ties to even
    else:
        offset = {"q4_0": 8, "q5_0": 16}.get(qtype, 0)
        lo = float(enc["m"][0, 0]) if "m" in enc else 0.0
        v = (x[0] - lo) / d + offset
        top = 2 ** gq.BITS[qtype] - 1
        np.testing.assert_array_equal(enc["codes"][0].numpy(), np.minimum(np.floor(v + 0.5), top))  # MIN(15, …)
    np.testing.assert_array_equal(gq.to_bytes(enc, qtype).numpy(), gguf.quants.quantize(x, GT[qtype.upper()]))


def test_signed_max_sets_the_sign_of_d():
    """q4_0/q5_0 scale by the signed extreme: a positive extreme gives a negative d and code 0."""
    x = np.linspace(-1, 1, 32, dtype=F32)[None]
    x[0, 7] = 2.0
    for qtype in ("q4_0", "q5_0"):
        enc = gq.quantize(torch.from_numpy(x), qtype)
        assert float(enc["d"]) < 0 and int(enc["codes"][0, 7]) == 0
        # x = -1: d = 2/-8 (q4_0) or 2/-16, so -1 * id = 4 or 8; plus 8.5 or 16.5, truncated
        assert int(enc["codes"][0, 0]) == {"q4_0": 12, "q5_0": 24}[qtype]
        x2 = -x
        enc2 = gq.quantize(torch.from_numpy(x2), qtype)
        assert float(enc2["d"]) > 0 and int(enc2["codes"][0, 7]) == 0
    zero = gq.quantize(torch.zeros(1, 32), "q4_0")  # ggml starts from max = +0.0: d = +0/-8 = -0.0
    assert math.copysign(1.0, float(zero["d"])) == -1.0
    ref = gguf.quants.quantize(np.zeros((1, 32), F32), GT.Q4_0)
    np.testing.assert_array_equal(gq.to_bytes(zero, "q4_0").numpy(), ref)


def test_shapes_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        gq.quantize(torch.zeros(2, 48), "q4_0")
    with pytest.raises(ValueError, match="unknown ggml type"):
        gq.quantize(torch.zeros(2, 32), "q3_0")


# -- iq4_nl: gguf-py dequantizes but does not quantize ----------------------------------------------


def test_gguf_py_has_no_iq4_nl_quantizer():
    """If this starts failing, gguf-py gained one: compare the bytes with it as for the others."""
    with pytest.raises(NotImplementedError):
        gguf.quants.quantize(np.zeros((1, 32), F32), GT.IQ4_NL)


@pytest.mark.parametrize("ntry", [-1, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_iq4_nl_values_equal_gguf_dequantize(shape, ntry):
    x = awkward(shape, "q4_0", seed=shape[-1])
    xt = torch.from_numpy(x)
    enc = GGMLBlocks("iq4_nl").encode(xt) if ntry == -1 else gq.quantize(xt, "iq4_nl", ntry=ntry)
    raw = gq.to_bytes(enc, "iq4_nl").numpy()
    assert raw.shape[-1] == shape[-1] // 32 * 18
    ref = gguf.quants.dequantize(raw, GT.IQ4_NL)
    np.testing.assert_array_equal(gq.dequantize(enc, "iq4_nl").numpy(), ref)
    assert same_blocks(gq.from_bytes(torch.from_numpy(raw), "iq4_nl"), enc)
    assert np.abs(ref - x).max() <= np.abs(x).max()  # sane, not garbage


def test_iq4_nl_hand_worked_block():
    """x = [1, 0.5, 0 …]: max 1 → d0 = 1/-127, so 1 → -127 (code 0); 0.5 → -63.5, nearer -65
    (code 3) than -49; 0 → nearer 1 (code 8) than -10. Weights x²: Σw·q·x = -127 - 8.125,
    Σw·q² = 16129 + 1056.25, d = their ratio; the zeros decode to d·1, not 0 (no zero level)."""
    x = np.zeros((1, 32), F32)
    x[0, 0], x[0, 1] = 1.0, 0.5
    enc = gq.quantize(torch.from_numpy(x), "iq4_nl")
    assert enc["codes"][0].tolist() == [0, 3] + [8] * 30
    d = F32(-135.125) / F32(17185.25)
    assert float(enc["d"][0]) == float(np.float16(d))
    np.testing.assert_array_equal(gq.dequantize(enc, "iq4_nl")[0, :3].numpy(),
                                  F32(np.float16(d)) * np.array([-127, -65, 1], F32))
    raw = gq.to_bytes(enc, "iq4_nl").numpy()[0]
    assert raw[2] == 0 | (8 << 4) and raw[3] == 3 | (8 << 4)  # byte j: value j low, value j+16 high


def test_iq4_nl_codebook_block_and_sign():
    """A block made of the codebook itself times 0.01 codes to 0…15 twice. Its extreme is the first
    value, -1.27, so d0 = -1.27/-127 = 0.01 > 0; negated, the extreme is +1.27 and d comes out
    negative with the same codes."""
    k = np.array(gq.KVALUES_IQ4NL * 2, F32) * F32(0.01)
    for sign in (1, -1):
        enc = gq.quantize(torch.from_numpy(sign * k[None]), "iq4_nl")
        assert enc["codes"][0].tolist() == list(range(16)) * 2
        assert float(enc["d"][0]) == float(np.float16(sign * 0.01))


def _iq4_nl_scalar(x: np.ndarray, ntry: int):
    """Element-by-element float32 transcription of the algorithm (ggml-quants.c), one block."""
    vals = [F32(v) for v in gq.KVALUES_IQ4NL]

    def best(a):
        if a <= vals[0]:
            return 0
        if a >= vals[-1]:
            return 15
        mu = next(i for i, v in enumerate(vals) if a < v)
        return mu - 1 if a - vals[mu - 1] < vals[mu] - a else mu

    def fit(id_):
        sqx = sq2 = F32(0)
        idx = []
        for xj in x:
            i = best(F32(id_ * xj))
            q, w = vals[i], F32(xj * xj)
            sqx, sq2 = F32(sqx + F32(F32(w * q) * xj)), F32(sq2 + F32(F32(w * q) * q))
            idx.append(i)
        return idx, sqx, sq2

    amax = max(abs(v) for v in x)
    mx = next(v for v in x if abs(v) == amax)
    if amax < F32(1e-15):
        return [8 if ntry > 0 else 0] * 32, F32(0)
    d0 = F32(-mx / vals[0]) if ntry > 0 else F32(mx / vals[0])
    idx, sqx, sq2 = fit(F32(F32(1) / d0))
    d = F32(sqx / sq2) if sq2 > 0 else F32(0)
    best_s = F32(d * sqx)
    for t in range(-ntry, ntry + 1):
        _, tqx, tq2 = fit(F32(F32(t + vals[0]) / mx))
        if tq2 > 0 and F32(tqx * tqx) > F32(best_s * tq2):
            d = F32(tqx / tq2)
            best_s = F32(d * tqx)
    if ntry > 0:
        id_ = F32(1) / d if d else F32(0)
        idx = [best(F32(id_ * xj)) for xj in x]
    return idx, d


@pytest.mark.parametrize("ntry", [-1, 7])
def test_iq4_nl_vectorized_equals_scalar_transcription(ntry):
    x = awkward((1, 6 * 32), "q4_0", seed=11).reshape(6, 32)
    x[0] = np.random.default_rng(5).standard_t(2, 32).astype(F32)
    enc = gq.quantize(torch.from_numpy(x), "iq4_nl", ntry=ntry)
    for b in range(6):
        idx, d = _iq4_nl_scalar(x[b], ntry)
        assert enc["codes"][b].tolist() == idx, b
        assert enc["d"][b].item() == float(np.float16(d)), b


# -- q8_1 and the q8 SIMD variants: hand-worked -----------------------------------------------------


def test_q8_1_hand_worked_blocks():
    """Block 0: 31.75 sets d = 31.75/127 = 1/4 (id 4); x_j = (j - 15.5)/4 for j ≥ 1 gives
    x·id = j - 15.5, every one a tie: roundf → -15 … -1, 1 … 16; Σq = 127 - 120 + 136 = 143 and
    s = 143/4 = 35.75. Block 1: zeros → d = s = 0. Block 2: block 0 negated → s = -35.75."""
    b0 = np.array([31.75] + [(j - 15.5) / 4 for j in range(1, 32)], F32)
    x = np.stack([b0, np.zeros(32, F32), -b0]).reshape(1, 96)
    enc = gq.quantize_q8_1(torch.from_numpy(x))
    codes = enc["codes"].view(3, 32)
    assert codes[0].tolist() == [127] + list(range(-15, 0)) + list(range(1, 17))
    assert enc["d"].tolist() == [[0.25, 0.0, 0.25]] and enc["s"].tolist() == [[35.75, 0.0, -35.75]]
    assert torch.equal(codes[2], -codes[0]) and (codes[1] == 0).all()
    values, s = gq.q8_1_values_and_sum(torch.from_numpy(x))
    assert torch.equal(s, enc["s"])
    assert torch.equal(values.view(3, 32)[0], codes[0].float() / 4)
    raw = gq.to_bytes(enc, "q8_1")
    assert raw.shape == (1, 3 * 36)  # ggml-common.h: 2 halves + 32 bytes (gguf-py's size table says 40, from float d/s)
    assert raw[0, :4].tolist() == [0x00, 0x34, 0x78, 0x50]  # fp16 0.25 = 0x3400, 35.75 = 0x5078 → LE
    assert same_blocks(gq.from_bytes(raw, "q8_1"), enc)


def test_q8_simd_kernels_round_ties_to_even():
    """ggml-cpu's SIMD quantize_row_q8_0 (ARM NEON, x86 AVX) rounds ties to even; the reference and
    gguf-py away from zero. With d = 1/4 the scale is exact under every kernel's id."""
    b0 = np.array([31.75] + [(j - 15.5) / 4 for j in range(1, 32)], F32)[None]
    ref = gq.quantize_q8_0(torch.from_numpy(b0))["codes"][0].tolist()
    expect_even = [127] + [round(j - 15.5) for j in range(1, 32)]  # Python's round: ties to even
    for kernel in ("arm_neon", "x86_avx"):
        assert gq.quantize_q8_0(torch.from_numpy(b0), kernel=kernel)["codes"][0].tolist() == expect_even
        s = gq.quantize_q8_1(torch.from_numpy(b0), kernel=kernel)["s"].item()
        assert s == sum(expect_even) / 4
    assert ref != expect_even
    with pytest.raises(ValueError, match="kernel"):
        gq.quantize_q8_0(torch.from_numpy(b0), kernel="avx512")


# -- names, genes, bytes ----------------------------------------------------------------------------

CANONICAL = ["ggml-q8_0", "ggml-q4_0", "ggml-q4_1", "ggml-q5_0", "ggml-q5_1", "ggml-iq4_nl",
             "ggml-k-q8_0-v-q4_0", "fp16"]


def test_canonical_schemes_are_listed():
    assert set(CANONICAL) <= set(canonical_names())


@pytest.mark.parametrize("text, name", [
    ("ggml-q8_0", "ggml-q8_0"), ("GGML-IQ4_NL", "ggml-iq4_nl"), ("ggml-k-q8_0-v-q4_0", "ggml-k-q8_0-v-q4_0"),
    ("ggml-k-q5_1-v-q5_1", "ggml-q5_1"), ("ggml-k-q8_0-v-f16", "ggml-k-q8_0-v-f16"),
    ("ggml-k-f16-v-iq4_nl", "ggml-k-f16-v-iq4_nl"), ("fp16", "fp16"),
    ("window-512+ggml-q4_0", "window-512+ggml-q4_0"),
    ("h2o-0.1-0.1+ggml-k-q8_0-v-q4_0", "h2o-0.1-0.1+ggml-k-q8_0-v-q4_0"),
    ("window-64+fp16", "window-64+fp16"),
])
def test_names_parse_to_canonical_form(text, name):
    s = parse_scheme(text)
    assert s.name == name and parse_scheme(s.name) == s


@pytest.mark.parametrize("bad, hint", [
    ("ggml-q3_0", "valid types: q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl"),
    ("ggml-k-q8_0-v-q2_k", "unknown ggml cache type 'q2_k'"),
    ("ggml-f16", "is the scheme 'fp16'"),
    ("ggml-k-f16-v-f16", "is the scheme 'fp16'"),
    ("ggml-k-q8_0", "Valid names"),
])
def test_bad_names_explain(bad, hint):
    with pytest.raises(UnknownNameError) as e:
        parse_scheme(bad)
    assert hint in str(e.value) and e.value.exit_code == 2


def test_cli_lists_types_for_an_unknown_ggml_type():
    from typer.testing import CliRunner

    from kvfp.cli.app import app

    r = CliRunner().invoke(app, ["schemes", "-s", "ggml-q3_0"])
    assert r.exit_code == 2 and "iq4_nl" in r.output and "Traceback" not in r.output


GENES = {
    "ggml-q8_0": (("block",), (), {"bits": 8, "group_size": 32}),
    "ggml-q4_0": (("block",), (), {"bits": 4, "group_size": 32}),
    "ggml-q4_1": (("block",), ("zero_point",), {"bits": 4, "group_size": 32}),
    "ggml-q5_0": (("block",), (), {"bits": 5, "group_size": 32}),
    "ggml-q5_1": (("block",), ("zero_point",), {"bits": 5, "group_size": 32}),
    "ggml-iq4_nl": (("block",), ("nonlinear",), {"bits": 4, "group_size": 32}),
    "ggml-k-q8_0-v-q4_0": (("block",), (), {"bits": 6, "k_bits": 8, "v_bits": 4, "group_size": 32}),
    "ggml-k-q5_1-v-iq4_nl": (("block",), ("zero_point", "nonlinear"),
                             {"bits": 4.5, "k_bits": 5, "v_bits": 4, "group_size": 32}),
    "ggml-k-q8_0-v-f16": (("block", "tensor"), (), {"bits": 12, "k_bits": 8, "v_bits": 16, "group_size": 32}),
    "fp16": (("tensor",), (), {"bits": 16, "exponent_bits": 5, "mantissa_bits": 10}),
}


@pytest.mark.parametrize("name", GENES)
def test_genes(name):
    g = parse_scheme(name).gene
    gran, comp, params = GENES[name]
    assert (g.algorithm, g.phase, g.granularity, g.compensation, g.params) == (
        "quantization", "both", gran, comp, params)
    assert g.strategy == ("static" if name == "fp16" else "dynamic")
    assert parse_scheme(name).role == "storage"


@pytest.mark.parametrize("name, per_block", [
    ("ggml-q8_0", (34, 34)), ("ggml-q4_0", (18, 18)), ("ggml-q4_1", (20, 20)), ("ggml-q5_0", (22, 22)),
    ("ggml-q5_1", (24, 24)), ("ggml-iq4_nl", (18, 18)), ("ggml-k-q8_0-v-q4_0", (34, 18)),
    ("ggml-k-q4_1-v-f16", (20, 64)), ("fp16", (64, 64)),
])
def test_nbytes_are_ggml_block_sizes(name, per_block):
    store = parse_scheme(name).make_store(0, 1)()
    assert isinstance(store, CodecStore) and store.prefill_reads_cache
    k = torch.randn(1, 2, 5, 64)
    store.append(k, k)
    store.append(k[:, :, :1], k[:, :, :1])
    blocks = 2 * 6 * 2  # heads × tokens × blocks per head
    assert store.nbytes() == blocks * sum(per_block)
    store.select(torch.tensor([[[0, 2, 5]]]))
    assert store.nbytes() == 2 * 3 * 2 * sum(per_block)


def test_store_decodes_what_the_kernels_give():
    store = parse_scheme("ggml-k-q8_0-v-iq4_nl").make_store(0, 1)()
    k, v = torch.randn(1, 2, 7, 64), torch.randn(1, 2, 7, 64)
    store.append(k, v)
    assert torch.equal(store.keys(), gq.fake_quantize(k, "q8_0"))
    assert torch.equal(store.values(), gq.fake_quantize(v, "iq4_nl"))
    half = parse_scheme("ggml-k-f16-v-q4_1").make_store(0, 1)()
    half.append(k.double(), v.double())
    assert half.keys().dtype == torch.float64 and torch.equal(half.keys(), k.double().half().double())
    assert half.values().dtype == torch.float64


def test_head_dim_must_be_whole_blocks():
    store = parse_scheme("ggml-q4_0").make_store(0, 1)()
    with pytest.raises(ValueError, match="multiple of 32"):
        store.append(torch.randn(1, 1, 2, 80), torch.randn(1, 1, 2, 80))


def test_fp16_is_not_the_16_bit_noop():
    s = parse_scheme("fp16")
    assert not s.is_noop
    store = s.make_store(0, 1)()
    assert not isinstance(store, ExactStore)
    k = torch.randn(1, 2, 3, 32) * 3
    store.append(k, k)
    assert torch.equal(store.keys(), k.half().float()) and not torch.equal(store.keys(), k)
    assert isinstance(s.codecs(0, 1, None)[0], Half)


# -- prefill reads the cache ------------------------------------------------------------------------


def _prefill(store_factory, k, v):
    S = k.shape[-2]
    step = StepState(valid=torch.ones(1, S, dtype=torch.bool), positions=torch.arange(S)[None])
    layer = StoredLayer(step, store_factory)
    keys, values = layer.update(k, v)[:2]
    return keys, values


def test_stored_layer_prefill_reads_the_store_only_when_it_says_so():
    k, v = torch.randn(1, 2, 9, 32), torch.randn(1, 2, 9, 32)
    codecs = (GGMLBlocks("q4_0"), GGMLBlocks("q4_0"))
    exact_k, _ = _prefill(lambda: CodecStore(*codecs), k, v)
    assert torch.equal(exact_k, k)  # the usual serving kernel: the chunk attends to its own K/V
    read_k, read_v = _prefill(lambda: CodecStore(*codecs, prefill_reads_cache=True), k, v)
    assert torch.equal(read_k, gq.fake_quantize(k, "q4_0")) and torch.equal(read_v, gq.fake_quantize(v, "q4_0"))


def test_hybrid_storage_half_keeps_the_flag():
    s = parse_scheme("window-512+ggml-q4_0")
    layer = s.make_layer(0, 1, StepState())
    assert layer.kv.prefill_reads_cache and isinstance(layer.kv.k_codec, GGMLBlocks)
    assert not parse_scheme("window-512+int4-pertoken").make_layer(0, 1, StepState()).kv.prefill_reads_cache


def test_prefill_under_ggml_q8_0_reads_its_quantized_cache(tiny, heldout_ids):
    """The prompt's own scores (prompt logprobs, first step's logits) change under ggml-q8_0, as
    llama.cpp attends prompt tokens over the quantized cache; int8-pertoken, like other engines,
    attends the prompt exactly, and none changes nothing."""
    model, tok = tiny
    p = prompt(heldout_ids, tok, 96)
    ref = generate(model, parse_scheme("none"), [p], 2, logits=True)[0]

    def run(name):
        tr = replay(model, parse_scheme(name), [p], [ref.output_ids], logits=True)[0]
        return np.array(tr.prompt_logprobs[1:], dtype=np.float64), tr.logits

    lp0 = np.array(ref.prompt_logprobs[1:], dtype=np.float64)
    for name, changes in (("none", False), ("int8-pertoken", False), ("ggml-q8_0", True)):
        lp, logits = run(name)
        assert (np.abs(lp - lp0).max() > 0) == changes, name
        assert (np.abs(logits[0] - ref.logits[0]).max() > 0) == changes, name


def test_fp16_on_a_float32_model_moves_logits_a_little(tiny, heldout_ids):
    model, tok = tiny
    assert next(model.parameters()).dtype == torch.float32
    p = prompt(heldout_ids, tok, 96)
    ref = generate(model, parse_scheme("none"), [p], 3, logits=True)[0]
    tr = replay(model, parse_scheme("fp16"), [p], [ref.output_ids], logits=True)[0]
    diff = np.abs(tr.logits - ref.logits)
    spread = ref.logits.max(-1) - ref.logits.min(-1)
    assert 0 < diff.max() < 0.01 * spread.min()
    assert tr.meta["memory"]["bytes_per_token_layer"] == tr.meta["memory"]["uncompressed_bytes_per_token_layer"] / 2
