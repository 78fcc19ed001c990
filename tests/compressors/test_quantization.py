"""Quantization schemes: names and genes, error bounds, stores (select, nbytes), faithfulness to the
methods they name, and end-to-end runs on kvfp-tiny."""

import os

import numpy as np
import pytest
import torch
from transformers.cache_utils import QuantizedLayer

from kvfp.compressors import canonical_names, parse_scheme
from kvfp.compressors.calibration import capture_kv
from kvfp.compressors.codecs import SymmetricPerToken
from kvfp.compressors.quantization.block_stores import ChannelBlocks, SideStore
from kvfp.compressors.quantization.kvquant import KVQuantStore, fit_kvquant, kmeans_1d
from kvfp.compressors.quantization.mixed import fit_layer_sensitivity, high_layers
from kvfp.compressors.rope import rope_cos_sin, undo_rope
from kvfp.compressors.stores import CodecStore, ExactStore, _gather_tokens
from kvfp.errors import UnknownNameError
from kvfp.kernels.quant_ref import (
    dequantize_asymmetric,
    dequantize_asymmetric_flat_groups,
    dequantize_asymmetric_groups,
    quantize_asymmetric,
    quantize_asymmetric_flat_groups,
    quantize_asymmetric_groups,
)
from kvfp.runner import generate
from tests.conftest import prompt

F32 = torch.float32
NEW = 3

# one row per scheme and parameter set: (name, the family's no-op setting or None)
SCHEMES = [
    ("int8-pertoken", "int16-pertoken"),
    ("int4-pertoken", "int16-pertoken"),
    ("int2-pertoken", "int16-pertoken"),
    ("int4-pertoken-zp", "int16-pertoken-zp"),
    ("int4-group32", "int16-group32"),
    ("int2-group32", "int16-group32"),
    ("int4-group16", "int16-group16"),
    ("int4-perchannel", "int16-perchannel"),
    ("int2-perchannel-t16", "int16-perchannel-t16"),
    ("kivi-2", "kivi-16"),
    ("kivi-4", "kivi-16"),
    ("kivi-2-g16-r64", "kivi-16-g16-r64"),
    ("int4-g64-r128", "int16-g64-r128"),
    ("int2-g16-r8", "int16-g16-r8"),
    ("fp8-e4m3", None),
    ("fp8-e5m2", None),
    ("fp8-e4m3-perhead", None),
    ("fp8-e5m2-perhead", None),
    ("fp4-e2m1-b16", None),
    ("fp4-e2m1-b8", None),
    ("int4-pertoken-mse", "int16-pertoken-mse"),
    ("int4-pertoken-q999", "int16-pertoken-q999"),
    ("int3-pertoken-q99", "int16-pertoken-q99"),
    ("int4-log", "int16-log"),
    ("int3-log-o1", "int16-log-o1"),
    ("kvquant-3", "kvquant-16"),
    ("kvquant-4-o0.5-s0", "kvquant-16-o0.5-s0"),
    ("mixed-4-8", "mixed-16-16"),
    ("mixed-2-4-f0.5", "mixed-16-16-f0.5"),
]
NAMES = [n for n, _ in SCHEMES]
NOOPS = sorted({z for _, z in SCHEMES if z})
NOOP_RUNS = sorted({parse_scheme(n).family: n for n in reversed(NOOPS)}.values())  # one per family
STORAGE = [n for n in NAMES if not n.startswith("kvquant")]

# canonical representatives and the compensation each must declare
CANONICAL = {
    "int8-pertoken": (), "int4-pertoken": (), "int2-pertoken": (),
    "int4-pertoken-zp": ("zero_point",),
    "int4-group32": ("zero_point",), "int2-group32": ("zero_point",),
    "int4-perchannel": ("zero_point", "residual_window"),
    "kivi-2": ("zero_point", "residual_window"), "kivi-4": ("zero_point", "residual_window"),
    "int4-g64-r128": ("zero_point", "residual_window"),
    "fp8-e4m3": (), "fp8-e5m2": (), "fp8-e4m3-perhead": ("calibration",),
    "fp4-e2m1-b16": (),
    "int4-pertoken-mse": ("clip_mse",), "int4-pertoken-q999": ("clip_quantile", "calibration"),
    "int4-log": ("nonlinear",),
    "kvquant-3": ("outliers", "sinks_kept", "nonlinear", "calibration"),
    "mixed-4-8": ("mixed_precision", "calibration"),
}


@pytest.fixture(scope="module", autouse=True)
def calibration_cache(tmp_path_factory):
    """Calibrations go to a fresh directory, not the user's cache."""
    old = os.environ.get("KVFP_CACHE")
    os.environ["KVFP_CACHE"] = str(tmp_path_factory.mktemp("kvfp_cache"))
    yield
    if old is None:
        os.environ.pop("KVFP_CACHE", None)
    else:
        os.environ["KVFP_CACHE"] = old


def synthetic_prep(scheme, layers=2, heads=2):
    """Stand-in calibrations for store-level tests (no model needed)."""
    fam = scheme.family
    if fam == "fp8" and scheme.perhead:
        return {"k_scale": torch.full((layers, heads), 0.01), "v_scale": torch.full((layers, heads), 0.02)}
    if fam == "int-pertoken-quantile":
        return {"k_clip": torch.full((layers, heads), 1.5), "v_clip": torch.full((layers, heads), 2.0)}
    if fam == "mixed":
        return {"sensitivity": torch.arange(layers, 0, -1, dtype=torch.float64)}  # layer 0 most sensitive
    return None


def make_store(name, layer=0, layers=2):
    scheme = parse_scheme(name)
    return scheme.make_store(layer, layers, synthetic_prep(scheme, layers))()


def kv_pair(S, seed=0, heads=2, D=32):
    torch.manual_seed(seed)
    shape = (1, heads, S, D)
    scale = torch.rand(1, heads, S, 1) * 3 + 0.2
    return torch.randn(shape) * scale, torch.randn(shape) * scale + 0.3


# -- names, genes, roles ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES + NOOPS)
def test_names_round_trip(name):
    s = parse_scheme(name)
    assert s.name == name and parse_scheme(s.name) == s
    assert s.gene.algorithm == "quantization" and s.gene.phase == "decode"


def test_canonical_catalogue_and_genes():
    names = set(canonical_names())
    assert set(CANONICAL) <= names
    for name, comp in CANONICAL.items():
        g = parse_scheme(name).gene
        assert set(comp) == set(g.compensation), name
        assert "bits" in g.params
    assert parse_scheme("kivi-2").gene.params == {"bits": 2, "group_size": 32, "residual": 128}
    assert parse_scheme("int4-g64-r128").gene.params == {"bits": 4, "group_size": 64, "residual": 128}
    assert parse_scheme("fp4-e2m1-b16").gene.granularity == ("block",)
    assert parse_scheme("fp8-e4m3-perhead").gene.granularity == ("head",)
    assert parse_scheme("int4-perchannel").gene.granularity == ("channel", "block")


@pytest.mark.parametrize("name", NAMES)
def test_roles_and_hybrids(name):
    scheme = parse_scheme(name)
    if name.startswith("kvquant"):  # needs RoPE positions, which a hybrid's store is not given
        assert scheme.role == "standalone"
        with pytest.raises(UnknownNameError, match="token-storage"):
            parse_scheme(f"window-64+{name}")
    else:
        assert scheme.role == "storage"
        assert parse_scheme(f"window-64+{name}").name == f"window-64+{name}"


@pytest.mark.parametrize("bad, hint", [
    ("int9-group32", "bits must be in 2..8"),
    ("int1-pertoken-zp", "bits must be in 2..8"),
    ("int4-group0", "at least 1"),
    ("kivi-2-g48-r128", "multiple of the group size"),
    ("kivi-12", "bits must be in 2..8"),
    ("mixed-8-4", "must not exceed"),
    ("mixed-4-8-f1.5", "fraction"),
    ("int4-pertoken-q000", "above 0"),
    ("kvquant-3-o150", "outlier"),
    ("fp8-e3m4", "Valid names"),
    ("int4-perchannel-t0", "at least 1"),
])
def test_bad_names_explain(bad, hint):
    with pytest.raises(UnknownNameError) as e:
        parse_scheme(bad)
    assert hint in str(e.value)


def test_group_must_fit_head_dim():
    store = make_store("int4-group24")
    k, v = kv_pair(4)
    with pytest.raises(ValueError, match="head_dim 32"):
        store.append(k, v)
    store = make_store("int4-g48-r8")
    with pytest.raises(ValueError, match="head_dim 32"):
        store.append(k, v)


# -- error bounds ------------------------------------------------------------------------------


def _half_step(enc, x):
    """Uniform RTN: half the step of each element's group."""
    s = enc["scale"].float()
    if s.shape[-1] == x.shape[-1] or s.shape[-1] == 1:
        return s.expand_as(x) / 2
    return s.repeat_interleave(x.shape[-1] // s.shape[-1], -1) / 2


def _clipped_bound(bits):
    qmax = 2 ** (bits - 1) - 1

    def bound(enc, x):
        s = enc["scale"].float()
        return torch.maximum(s / 2, x.abs() - qmax * s)  # half a step, or what saturation cut off

    return bound


def _nearest_level(enc, x, levels):
    s = enc["scale"].float()
    lv = torch.tensor(levels)
    return (x.float()[..., None] / s[..., None] - lv).abs().amin(-1) * s


def _fp8_bound(man, min_normal, sub_half):
    def bound(enc, x):
        return torch.where(x.abs() >= min_normal, x.abs() * 2.0 ** -(man + 1), torch.full_like(x, sub_half))
    return bound


def _fp4_bound(block):
    def bound(enc, x):
        s = enc["scale"].view(torch.float8_e4m3fn).float().repeat_interleave(block, -1)
        r = (x.abs() / s).clamp(max=6)
        half = torch.where(r <= 2, 0.25, torch.where(r <= 4, 0.5, 1.0))
        return half * s + (x.abs() - 6 * s).clamp(min=0)
    return bound


BOUNDS = [
    ("int8-pertoken", _half_step),
    ("int4-pertoken", _half_step),
    ("int2-pertoken", _half_step),
    ("int4-pertoken-zp", _half_step),
    ("int4-group16", _half_step),
    ("int2-group32", _half_step),
    ("int4-pertoken-mse", _clipped_bound(4)),
    ("int4-pertoken-q999", _clipped_bound(4)),
    ("int4-log", lambda enc, x: _nearest_level(enc, x, parse_scheme("int4-log").codecs(0, 1, None)[0].levels)),
    ("fp8-e4m3", _fp8_bound(3, 2.0**-6, 2.0**-10)),
    ("fp8-e5m2", _fp8_bound(2, 2.0**-14, 2.0**-17)),
    ("fp4-e2m1-b16", _fp4_bound(16)),
]


@pytest.mark.parametrize("name, bound", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_token_codecs_within_analytic_bound(name, bound):
    store = make_store(name)
    assert isinstance(store, CodecStore)
    k, v = kv_pair(63, seed=3)
    store.append(k, v)
    for x, enc, deq in ((k, store.k_enc, store.keys()), (v, store.v_enc, store.values())):
        err = (deq.float() - x).abs()
        assert (err <= bound(enc, x) + 1e-5).all()
        assert err.max() > 0  # it is lossy


def test_mse_clipping_beats_absmax_and_quantile_clip_caps_scales():
    k, _ = kv_pair(63, seed=4)
    k[..., 3] += 6 * (torch.rand(1, 2, 63) > 0.9)  # occasional spikes
    rtn, mse = make_store("int4-pertoken"), make_store("int4-pertoken-mse")
    for s in (rtn, mse):
        s.append(k, k)
    e_rtn = ((rtn.keys() - k) ** 2).sum(-1)
    e_mse = ((mse.keys() - k) ** 2).sum(-1)
    assert (e_mse <= e_rtn + 1e-5).all() and (e_mse < e_rtn - 1e-6).any()
    q = make_store("int4-pertoken-q999")  # synthetic clip 1.5 for keys
    q.append(k, k)
    assert torch.allclose(q.k_enc["scale"], torch.minimum(k.abs().amax(-1, keepdim=True), torch.tensor(1.5)) / 7)


def test_fp8_store_equals_torch_cast():
    for fmt, dt in (("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
        store = make_store(f"fp8-{fmt}")
        k, v = kv_pair(20, seed=5)
        store.append(k * 100, v)
        assert torch.equal(store.keys(), (k * 100).to(dt).float())
        assert torch.equal(store.values(), v.to(dt).float())
    store = make_store("fp8-e4m3-perhead")  # synthetic scales: K 0.01, V 0.02
    store.append(k, v)
    assert torch.equal(store.keys(), (k / 0.01).to(torch.float8_e4m3fn).float() * 0.01)


def test_outlier_channel_per_token_versus_per_channel():
    """Per token, one large channel sets every token's scale, so every channel of every token
    loses resolution; per channel, only the outlier channel gets a large scale."""
    torch.manual_seed(1)
    x = torch.randn(1, 2, 64, 32)
    x[..., 5] = 50 * (1 + torch.rand(1, 2, 64)) * torch.randn(1, 2, 64).sign()
    others = [c for c in range(32) if c != 5]
    tok = SymmetricPerToken(4)
    enc = tok.encode(x)
    err_t = (tok.decode(enc, F32) - x).abs()
    pc = ChannelBlocks(4, 32, 32)
    pc.append(x)
    assert not pc.exact.any()  # 64 tokens = two complete blocks
    err_c = (pc.dec - x).abs()
    # per token: every token's scale is set by the outlier channel
    assert torch.allclose(enc["scale"], x[..., 5:6].abs() / 7, rtol=1e-5)
    assert err_t[..., others].mean() > 5 * err_c[..., others].mean()
    # per channel: the outlier channel's scale is large, the others' stay small
    assert (pc.scale[..., 5] > 10 * pc.scale[..., others].amax(-1)).all()
    assert err_c[..., others].max() < err_t[..., others].max() / 5
    assert err_c[..., 5].mean() > 5 * err_c[..., others].mean()


# -- faithfulness: KIVI, per-channel blocks, HF requantization -------------------------------


def test_kivi_keys_per_channel_values_per_token_with_residual():
    store = make_store("kivi-2-g16-r32")
    k, v = kv_pair(64, seed=6)
    store.append(k[:, :, :40], v[:, :, :40])
    assert torch.equal(store.keys(), k[:, :, :40])  # prefill attends exactly
    ks, vs = store.k_side.dec, store.v_side.dec
    for g in range(2):  # first 32 keys: per channel, groups of 16 tokens
        blk = k[:, :, 16 * g:16 * (g + 1)]
        c, s, m = quantize_asymmetric(blk, 2, dim=-2)
        assert torch.allclose(ks[:, :, 16 * g:16 * (g + 1)], dequantize_asymmetric(c, s, m, F32), atol=1e-6)
    assert torch.equal(ks[:, :, 32:], k[:, :, 32:40])  # key residual
    c, s, m = quantize_asymmetric_groups(v[:, :, :8], 2, 16)  # all but the last 32 values, per token
    assert torch.allclose(vs[:, :, :8], dequantize_asymmetric_groups(c, s, m, F32), atol=1e-6)
    assert torch.equal(vs[:, :, 8:], v[:, :, 8:40])
    for t in range(40, 64):
        store.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
    # the step that completes the block still reads it at full precision …
    assert torch.equal(store.keys()[:, :, 32:], k[:, :, 32:64])
    assert torch.equal(store.values()[:, :, 32:], v[:, :, 32:64])
    # … and it is quantized right after; the values' window slid by one per step
    assert not torch.equal(store.k_side.dec[:, :, 32:], k[:, :, 32:64])
    assert store.k_side.exact.sum() == 0 and store.v_side.exact[0, 0].tolist() == [False] * 32 + [True] * 32


def test_perchannel_quantizes_full_blocks_only():
    store = make_store("int4-perchannel-t16")
    k, v = kv_pair(40, seed=7)
    store.append(k, v)
    side = store.k_side
    assert side.exact[0, 0].tolist() == [False] * 32 + [True] * 8
    assert side.scale.shape == (1, 2, 2, 32)
    c, s, m = quantize_asymmetric(k[:, :, 16:32], 4, dim=-2)
    assert torch.allclose(side.dec[:, :, 16:32], dequantize_asymmetric(c, s, m, F32), atol=1e-6)
    err = (side.dec[:, :, :32] - k[:, :, :32]).abs().view(1, 2, 2, 16, 32)
    assert (err <= side.scale.unsqueeze(3) / 2 + 1e-5).all()


class _RefQuantizedLayer(QuantizedLayer):
    """transformers' own ``QuantizedLayer.update`` with our quantizer as its backend."""

    def _quantize(self, tensor, axis):
        return (*quantize_asymmetric_flat_groups(tensor, self.nbits, self.q_group_size), tensor.dtype)

    def _dequantize(self, q):
        codes, scale, mn, dtype = q
        return dequantize_asymmetric_flat_groups(codes, scale, mn, self.q_group_size, dtype)


@pytest.mark.parametrize("bits, group, residual", [(2, 64, 5), (4, 16, 4)])
def test_hf_requant_reproduces_transformers_update(bits, group, residual):
    ref = _RefQuantizedLayer(nbits=bits, q_group_size=group, residual_length=residual)
    store = make_store(f"int{bits}-g{group}-r{residual}")
    k, v = kv_pair(31, seed=8)
    for a, b in [(0, 11)] + [(t, t + 1) for t in range(11, 31)]:
        rk, rv = ref.update(k[:, :, a:b], v[:, :, a:b])
        store.append(k[:, :, a:b], v[:, :, a:b])
        assert torch.equal(store.keys(), rk) and torch.equal(store.values(), rv)


# -- stores: select and nbytes ----------------------------------------------------------------


def _state(store):
    """What the next step reads back for the entries now stored."""
    if isinstance(store, SideStore):
        return store.k_side.dec, store.v_side.dec
    return store.keys(), store.values()


@pytest.mark.parametrize("name", STORAGE)
def test_store_select_keeps_exactly_the_chosen_tokens(name):
    store = make_store(name)
    k, v = kv_pair(74, seed=9)
    store.append(k[:, :, :70], v[:, :, :70])
    for t in range(70, 73):
        store.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
    S = len(store)
    assert S == 73
    seen_k, seen_v = store.keys().clone(), store.values().clone()
    st_k, st_v = (t.clone() for t in _state(store))
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(S, generator=g)[:40].sort().values for _ in range(2)]).unsqueeze(0)
    before = store.nbytes()
    store.select(idx)  # a different subset per head
    assert len(store) == 40
    assert torch.equal(store.keys(), _gather_tokens(seen_k, idx))
    assert torch.equal(store.values(), _gather_tokens(seen_v, idx))
    assert 0 < store.nbytes() < before
    store.append(k[:, :, 73:], v[:, :, 73:])
    assert torch.equal(store.keys()[:, :, :40], _gather_tokens(st_k, idx))
    assert torch.equal(store.values()[:, :, :40], _gather_tokens(st_v, idx))
    if isinstance(store, SideStore):  # a residual: the new token is read exactly at its own step
        assert torch.equal(store.keys()[:, :, 40], k[:, :, 73])


# (name, prefill tokens, decode tokens, bytes) for B=1, 2 KV heads, head_dim 32, float32 inputs
NBYTES = [
    ("int8-pertoken", 10, 0, 2 * 2 * 10 * (32 + 4)),
    ("int4-pertoken", 10, 0, 2 * 2 * 10 * (16 + 4)),
    ("int2-pertoken", 10, 0, 2 * 2 * 10 * (8 + 4)),
    ("int4-pertoken-zp", 10, 0, 2 * 2 * 10 * (16 + 8)),
    ("int4-group16", 10, 0, 2 * 2 * 10 * (16 + 2 * 8)),
    ("int2-group32", 10, 0, 2 * 2 * 10 * (8 + 8)),
    # one complete block of 32: codes + (scale, mn) per channel; 8 tokens still exact
    ("int4-perchannel", 40, 0, 2 * 2 * (32 * 16 + 32 * 8 + 8 * 32 * 4)),
    ("int4-perchannel-t16", 30, 3, 2 * 2 * (32 * 16 + 2 * 32 * 8 + 1 * 32 * 4)),
    # keys: 32 quantized in 2 groups, 8 exact; values: 8 quantized (2 groups each), 32 exact
    ("kivi-2-g16-r32", 40, 0, 2 * (32 * 8 + 2 * 32 * 8 + 8 * 32 * 4) + 2 * (8 * (8 + 2 * 8) + 32 * 32 * 4)),
    # prefill quantized (10 groups of 64 = 2 tokens), 3 residual tokens exact
    ("int4-g64-r128", 10, 3, 2 * 2 * (10 * 16 + 3 * 32 * 4) + 2 * (10 * 2 * 32 // 64) * 8),
    # the 8th decode token fills the residual: all 18 tokens re-quantized, 2 groups each
    ("int4-g16-r8", 10, 8, 2 * (2 * 18 * 16 + 2 * 18 * 2 * 8)),
    ("fp8-e4m3", 10, 0, 2 * (2 * 10 * 32 + 4)),
    ("fp8-e5m2", 10, 0, 2 * (2 * 10 * 32 + 4)),
    ("fp8-e4m3-perhead", 10, 0, 2 * (2 * 10 * 32 + 2 * 4)),
    ("fp4-e2m1-b16", 10, 0, 2 * 2 * 10 * (16 + 2)),
    ("fp4-e2m1-b8", 10, 0, 2 * 2 * 10 * (16 + 4)),
    ("int4-pertoken-mse", 10, 0, 2 * 2 * 10 * (16 + 4)),
    ("int4-pertoken-q999", 10, 0, 2 * (2 * 10 * (16 + 4) + 2 * 4)),
    ("int4-log", 10, 0, 2 * 2 * 10 * (16 + 4)),
    ("int3-log-o1", 10, 0, 2 * 2 * 10 * (12 + 4)),  # 7 levels: 3-bit codes
    ("mixed-4-8", 10, 0, 2 * 2 * 10 * (32 + 4)),  # layer 0 is the sensitive one: int8
]


@pytest.mark.parametrize("name, prefill, decode, expected", NBYTES, ids=[r[0] for r in NBYTES])
def test_nbytes_by_hand(name, prefill, decode, expected):
    store = make_store(name)
    k, v = kv_pair(prefill + decode, seed=10)
    store.append(k[:, :, :prefill], v[:, :, :prefill])
    for t in range(prefill, prefill + decode):
        store.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
    assert store.nbytes() == expected


def test_noop_stores_are_exact():
    for name in NOOPS:
        if not name.startswith("kvquant"):  # standalone: no store for hybrids
            assert isinstance(make_store(name), ExactStore)


# -- KVQuant --------------------------------------------------------------------------------


def _kvquant_store(bits=3, frac=0.01, D=32, H=2):
    lv = torch.linspace(-0.9, 0.9, 2**bits)
    return KVQuantStore(bits, -torch.ones(H, D), torch.ones(H, D), lv, lv, frac)


def test_kvquant_store_outliers_sinks_and_nbytes():
    store = _kvquant_store()
    torch.manual_seed(11)
    k = torch.rand(1, 2, 10, 32) * 1.8 - 0.9  # inside the calibrated key range [-1, 1] …
    k[0, 0, 3, 7] = k[0, 1, 5, 0] = 5.0  # … except three planted outliers
    k[0, 1, 9, 31] = -4.0
    v = torch.randn(1, 2, 10, 32)
    sink = torch.zeros(1, 10, dtype=torch.bool)
    sink[0, 0] = True
    store.set_context(None, None, sink)
    store.append(k, v)
    kd, vd = store.keys(), store.values()
    assert torch.equal(kd[:, :, 0], k[:, :, 0]) and torch.equal(vd[:, :, 0], v[:, :, 0])  # the sink
    assert kd[0, 0, 3, 7] == 5.0 and kd[0, 1, 5, 0] == 5.0 and kd[0, 1, 9, 31] == -4.0
    top = v.abs().argmax(-1, keepdim=True)  # one value outlier per token (1% of 32, at least one)
    assert torch.equal(vd.gather(-1, top), v.gather(-1, top))
    inliers = (k.abs() < 1)
    inliers[:, :, 0] = False
    gap = 0.9 * 2 / 7 / 2 + 1e-6  # half the spacing of the test's levels
    assert ((kd - k).abs()[inliers] <= gap + 1e-6).all() and ((kd - k).abs()[inliers] > 0).any()
    # 18 non-sink token-heads: 3-bit K and V codes (12 + 12 bytes) and a float32 (mid, half) for V;
    # outliers: 3 keys + 18 values, each value + int32 index; 2 sink token-heads exact; calibration
    expected = 18 * (12 + 12 + 8) + (3 + 18) * (4 + 4) + 2 * 2 * 32 * 4 + 4 * (2 * 2 * 32 + 8 + 8)
    assert store.nbytes() == expected
    idx = torch.tensor([[[0, 3, 4], [1, 5, 9]]])
    store.select(idx)
    assert torch.equal(store.keys(), _gather_tokens(kd, idx)) and torch.equal(store.values(), _gather_tokens(vd, idx))


def test_kvquant_quantizes_keys_before_rope(tiny):
    model, _ = tiny
    rotary = model.model.rotary_emb
    store = _kvquant_store(bits=4)
    torch.manual_seed(12)
    k_pre = torch.rand(1, 2, 20, 32) * 1.8 - 0.9
    pos = torch.arange(100, 120).view(1, 20)
    cos, sin = rope_cos_sin(rotary, k_pre, pos)
    k = (k_pre * cos + torch.cat([-k_pre[..., 16:], k_pre[..., :16]], -1) * sin)  # RoPE applied
    store.set_context(cos, sin, torch.zeros(1, 20, dtype=torch.bool))
    store.append(k, torch.randn(1, 2, 20, 32))
    back = undo_rope(store.keys(), cos, sin)
    assert ((back - k_pre).abs() <= 0.9 * 2 / 15 / 2 + 1e-5).all()  # per-channel error bound pre-RoPE
    assert not torch.allclose(store.keys(), k_pre)


def test_kvquant_calibration(tiny):
    model, _ = tiny
    scheme = parse_scheme("kvquant-3")
    prep = scheme.prepare(model)
    L = model.config.num_hidden_layers
    assert prep["k_lo"].shape == (L, 2, 32) and prep["k_levels"].shape == (L, 8)
    assert (prep["k_levels"].diff(dim=-1) > 0).all() and (prep["v_levels"].abs() <= 1).all()
    kv = capture_kv(model)
    kp = torch.stack([layer["k_pre"][:, :, 1:] for layer in kv])  # (L, N, H, T, D)
    lo, hi = prep["k_lo"][:, None, :, None, :], prep["k_hi"][:, None, :, None, :]
    strictly = ((kp < lo) | (kp > hi)).float().mean()
    inclusive = ((kp <= lo) | (kp >= hi)).float().mean()
    assert strictly <= 0.0105 and inclusive >= 0.0095  # ~1% of calibration entries are outliers
    again = fit_kvquant(kv[:1], 3, 0.01)  # deterministic
    assert all(torch.equal(again[n][0], prep[n][0]) for n in prep)


def test_kmeans_finds_separated_clusters():
    x = torch.cat([torch.randn(1000) * 0.01 + c for c in (-0.8, -0.1, 0.5)])
    c = kmeans_1d(x, 3)
    assert torch.allclose(c, torch.tensor([-0.8, -0.1, 0.5]), atol=0.01)


# -- calibrated token-local schemes --------------------------------------------------------------


def test_calibration_does_not_depend_on_the_loaded_attention(tiny, tiny_eager):
    # the calibration cache is keyed by the weights: sdpa and eager loads must capture the same K/V
    assert tiny[0].config._attn_implementation != tiny_eager[0].config._attn_implementation
    a, b = capture_kv(tiny[0]), capture_kv(tiny_eager[0])
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("k_pre", "k", "v"))
    assert tiny[0].config._attn_implementation == "sdpa"  # restored after the capture


def test_calibrations_match_independent_statistics(tiny):
    model, _ = tiny
    kv = capture_kv(model)
    fp8 = parse_scheme("fp8-e4m3-perhead").prepare(model)
    amax = torch.stack([layer["k"].abs().amax(dim=(0, 2, 3)) for layer in kv])
    assert torch.allclose(fp8["k_scale"], amax / 448)
    q = parse_scheme("int4-pertoken-q999").prepare(model)
    for li, layer in enumerate(kv):
        for h in range(2):  # the 0.999 quantile of |v| over all calibration tokens and channels of the head
            a, c = layer["v"][:, h].abs(), q["v_clip"][li, h]
            assert (a < c).float().mean() <= 0.999 + 1e-4 and (a <= c).float().mean() >= 0.999 - 1e-4
    mixed = parse_scheme("mixed-4-8")
    prep = mixed.prepare(model)
    sens = fit_layer_sensitivity(kv, 4)["sensitivity"]
    assert torch.equal(prep["sensitivity"], sens)
    L = model.config.num_hidden_layers
    n_high = int(0.25 * L + 0.5)  # the documented rule: floor(0.25·L + 0.5) layers at int8
    top = set(sens.argsort(descending=True)[:n_high].tolist())
    bits = [mixed.make_store(i, L, prep)().k_codec.bits for i in range(L)]
    assert [i for i, b in enumerate(bits) if b == 8] == sorted(top)
    assert bits.count(4) == L - n_high


@pytest.mark.parametrize("sens, frac, expected", [
    ([1.0, 3.0, 2.0, 0.5], 0.25, {1}),
    ([1.0, 3.0, 2.0, 0.5], 0.5, {1, 2}),
    ([1.0, 1.0, 1.0, 1.0], 0.5, {0, 1}),  # ties: lower layer first
    ([1.0, 3.0, 2.0, 0.5], 0.0, set()),
])
def test_high_precision_layers(sens, frac, expected):
    assert high_layers(torch.tensor(sens), frac) == expected


# -- end to end on kvfp-tiny ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 160)  # KIVI's default residual of 128: the prefill quantizes 128 keys
    return p, generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]


@pytest.mark.parametrize("name", NAMES)
def test_runs_end_to_end_and_differs_from_none(tiny, reference, name):
    model, _ = tiny
    p, none = reference
    tr = generate(model, parse_scheme(name), [p], NEW, logits=True)[0]
    assert tr.meta["scheme"] == name and np.isfinite(tr.logits).all()
    assert np.array_equal(tr.logits[0], none.logits[0])  # prefill attends exactly
    assert np.abs(tr.logits - none.logits).max() > 1e-4  # decode reads the compressed cache
    mem = tr.meta["memory"]
    assert mem["bytes_per_token_layer"] < mem["uncompressed_bytes_per_token_layer"]


@pytest.mark.parametrize("name", NOOP_RUNS)
def test_noop_setting_equals_none(tiny, reference, name):
    model, _ = tiny
    p, none = reference
    tr = generate(model, parse_scheme(name), [p], NEW, logits=True)[0]
    np.testing.assert_allclose(tr.logits, none.logits, atol=1e-4, rtol=0)
    assert tr.meta["memory"]["bytes_per_token_layer"] == tr.meta["memory"]["uncompressed_bytes_per_token_layer"]


@pytest.fixture(scope="module")
def window_run(tiny, reference):
    return generate(tiny[0], parse_scheme("window-48"), [reference[0]], NEW, logits=True)[0]


@pytest.mark.parametrize("store", ["kivi-2-g16-r32", "int4-g16-r8", "int4-perchannel-t16", "fp8-e4m3-perhead",
                                   "mixed-4-8", "fp4-e2m1-b16"])
def test_hybrids_apply_both_parts(tiny, reference, window_run, store):
    model, _ = tiny
    p, window = reference[0], window_run
    tr = generate(model, parse_scheme(f"window-48+{store}"), [p], NEW, logits=True)[0]
    assert np.array_equal(tr.logits[0], window.logits[0])
    assert np.abs(tr.logits - window.logits).max() > 1e-4
    assert tr.meta["memory"]["bytes_per_token_layer"] < window.meta["memory"]["bytes_per_token_layer"]
