"""Projection schemes: per-head low rank (svd), the MLA-style shared latent (mla), token merging."""

import math

import numpy as np
import pytest
import torch

from kvfp.compressors import calibration, parse_scheme
from kvfp.compressors.layer import StepState
from kvfp.compressors.projection.latent import LatentStore, fit_joint_latent, joint_rows, nope_dims
from kvfp.compressors.projection.lowrank import LowRankStore, fit_head_bases
from kvfp.compressors.projection.merge import MergeLayer, merge_adjacent
from kvfp.errors import KvfpError, UnknownNameError
from kvfp.runner import attach, generate
from tests.conftest import prompt

NEW = 5


@pytest.fixture(scope="module", autouse=True)
def calibration_cache(tmp_path_factory):
    """Calibrations go to a fresh directory; fits from other test files are forgotten (captures kept)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(tmp_path_factory.mktemp("kvfp_cache")))
        mp.setattr(calibration, "_memory", {k: v for k, v in calibration._memory.items() if k[0] == "kv"})
        yield


@pytest.fixture(scope="module")
def capture(tiny):
    model, tok = tiny
    return calibration.capture_kv(model, tok)


@pytest.fixture(scope="module")
def reference(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 160)
    return p, generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]


def rope_step(model, n, t):
    """A step state for ``n`` unpadded rows of ``t`` tokens at positions 0..t-1."""
    return StepState(valid=torch.ones(n, t, dtype=torch.bool), positions=torch.arange(t).expand(n, t),
                     rotary=model.model.rotary_emb)


# -- names and genes --------------------------------------------------------------------------

@pytest.mark.parametrize("text, name", [
    ("svd-r16", "svd-r16"), ("svd-r32", "svd-r32"), ("svd-k8-v24", "svd-k8-v24"),
    ("svd-r16-k8", "svd-k8-v16"), ("svd-r8-v8", "svd-r8"), ("svd-k4-v4", "svd-r4"),
    ("mla-48", "mla-48"), ("mla-48-r2", "mla-48"), ("mla-128", "mla-128"), ("mla-40-r4", "mla-40-r4"),
    ("merge-0.5", "merge-0.5"), ("merge-1.0", "merge-1"), ("merge-0.25", "merge-0.25"), ("merge-.2", "merge-0.2"),
])
def test_names_parse_and_normalise(text, name):
    s = parse_scheme(text)
    assert s.name == name
    assert parse_scheme(name) == s


@pytest.mark.parametrize("bad, hint", [
    ("svd", "give a rank"), ("svd-k8", "give a rank"), ("svd-r0", "at least 1"),
    ("mla-0", "at least 1 dim"), ("merge-0", "(0, 1]"), ("merge-1.5", "(0, 1]"),
])
def test_bad_names_explain(bad, hint):
    with pytest.raises(UnknownNameError) as e:
        parse_scheme(bad)
    assert hint in str(e.value)


@pytest.mark.parametrize("name, algorithm, granularity, phase, params", [
    ("svd-r16", "low_rank", ("head",), "decode", {"rank": 16, "k_rank": 16, "v_rank": 16}),
    ("svd-k8-v24", "low_rank", ("head",), "decode", {"rank": 16, "k_rank": 8, "v_rank": 24}),
    ("mla-48", "latent", ("layer", "head"), "decode", {"rank": 48, "rope_pairs": 2}),
    ("merge-0.5", "merging", ("token", "head"), "both", {"budget": 0.5}),
])
def test_genes(name, algorithm, granularity, phase, params):
    g = parse_scheme(name).gene
    assert (g.algorithm, g.granularity, g.phase, g.params) == (algorithm, granularity, phase, params)
    assert g.strategy == ("dynamic" if algorithm == "merging" else "static")
    assert ("calibration" in g.compensation) == (algorithm != "merging")


@pytest.mark.parametrize("name, message", [("svd-r33", "head_dim"), ("mla-121", "at most 120"),
                                           ("mla-8-r17", "RoPE pairs")])
def test_settings_beyond_the_model_are_user_errors(tiny, name, message):
    model, _ = tiny
    with pytest.raises(KvfpError, match=message):
        parse_scheme(name).prepare(model)


# -- low rank: reconstruction error is the discarded spectrum ---------------------------------

@pytest.mark.parametrize("which", ["k", "v"])
def test_low_rank_error_is_the_discarded_spectrum_and_falls_with_rank(tiny, capture, which):
    model, _ = tiny
    ranks = [1, 4, 16, 31, 32]
    preps = {r: parse_scheme(f"svd-r{r}").prepare(model) for r in ranks}
    sv = parse_scheme("svd-r1").calibration(model)[f"{which}_sv"]
    for layer_idx, layer in enumerate(capture):
        x = (layer["k_pre"] if which == "k" else layer["v"]).double()  # (N, H, T, D)
        for h in range(x.shape[1]):
            xh = x[:, h].reshape(-1, x.shape[-1])
            total = float((xh ** 2).sum())
            errs = []
            for r in ranks:
                basis = preps[r][which][layer_idx, h].double()  # (D, r)
                err = float(((xh - xh @ basis @ basis.T) ** 2).sum())
                discarded = float((sv[layer_idx, h, r:].double() ** 2).sum())
                assert err == pytest.approx(discarded, rel=1e-3, abs=1e-6 * total)
                errs.append(err)
            assert all(a > b for a, b in zip(errs[:-2], errs[1:-1])), errs  # strictly falling to…
            assert errs[-1] < 1e-6 * total  # …nothing at full rank


@pytest.mark.parametrize("rank", [4, 16])
def test_low_rank_store_reconstructs_post_rope_keys_with_the_same_error(tiny, capture, rank):
    """Through the store: post-RoPE keys are de-rotated, projected, rebuilt and rotated again; RoPE
    is a rotation, so the error is still exactly the pre-RoPE projection's discarded spectrum."""
    model, _ = tiny
    prep = parse_scheme(f"svd-r{rank}").prepare(model)
    sv = parse_scheme(f"svd-r{rank}").calibration(model)
    for layer_idx in (0, len(capture) - 1):
        k, v = capture[layer_idx]["k"], capture[layer_idx]["v"]
        store = LowRankStore(rope_step(model, *k.shape[::2]), prep["k"][layer_idx], prep["v"][layer_idx])
        store.append(k, v)
        assert store.enc["k"].shape == (*k.shape[:3], rank) and store.enc["v"].shape == (*v.shape[:3], rank)
        assert store.nbytes() == 2 * k.shape[0] * k.shape[1] * k.shape[2] * rank * 4
        for name, x, rebuilt in (("k", k, store.keys()), ("v", v, store.values())):
            err = ((x.double() - rebuilt.double()) ** 2).sum(dim=(0, 2, 3))  # per head
            discarded = (sv[f"{name}_sv"][layer_idx, :, rank:].double() ** 2).sum(-1)
            np.testing.assert_allclose(err.numpy(), discarded.numpy(), rtol=1e-3)


# -- the shared latent ------------------------------------------------------------------------

@pytest.mark.parametrize("latent, pairs", [(8, 2), (48, 2), (100, 2), (40, 4), (64, 0)])
def test_latent_error_is_the_discarded_spectrum(tiny, capture, latent, pairs):
    model, _ = tiny
    scheme = parse_scheme(f"mla-{latent}-r{pairs}")
    prep, sv = scheme.prepare(model), scheme.calibration(model)["sv"]
    for layer_idx in (0, 3, len(capture) - 1):
        k, v = capture[layer_idx]["k"], capture[layer_idx]["v"]  # (N, H, T, D) post-RoPE keys
        N, H, T, D = k.shape
        rope_idx = prep["rope_idx"][layer_idx]
        assert rope_idx.shape == (H, 2 * pairs)
        assert torch.equal(rope_idx[:, pairs:], rope_idx[:, :pairs] + D // 2)  # whole RoPE pairs
        store = LatentStore(rope_step(model, N, T), prep["basis"][layer_idx], rope_idx)
        store.append(k, v)
        # one latent per token per layer, shared by all heads, plus the kept RoPE dims per head
        assert store.enc["latent"].shape == (N, 1, T, latent)
        assert store.enc["rope"].shape == (N, H, T, 2 * pairs)
        assert store.nbytes() == N * T * (latent + H * 2 * pairs) * 4
        kept = rope_idx.view(1, H, 1, -1).expand(N, H, T, -1)
        assert torch.equal(store.keys().gather(-1, kept), k.gather(-1, kept))  # kept apart exactly
        err = float(((store.keys().double() - k.double()) ** 2).sum()
                    + ((store.values().double() - v.double()) ** 2).sum())
        discarded = float((sv[layer_idx, latent:].double() ** 2).sum())
        assert err == pytest.approx(discarded, rel=1e-3)
        # the joint rows' width: non-RoPE key dims and values of every head
        assert joint_rows(capture[layer_idx]["k_pre"][:1], v[:1], nope_dims(rope_idx, D)).shape[-1] == \
            H * (D - 2 * pairs) + H * D


def test_latent_error_falls_with_its_size(tiny, capture):
    model, _ = tiny
    errs = []
    for latent in (8, 24, 48, 96, 120):
        sv = parse_scheme(f"mla-{latent}").calibration(model)["sv"]
        errs.append(float((sv[:, latent:].double() ** 2).sum()))
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_latent_is_stored_once_per_token_per_layer_in_a_real_run(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 90)
    with attach(model, parse_scheme("mla-48")) as att:
        cache = att.new_cache()
        ids = torch.tensor([p])
        mask = torch.ones(1, len(p), dtype=torch.long)
        cache.begin_step(mask, torch.arange(len(p))[None])
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(len(p))[None],
                  cache=cache, kvfp_cache=cache)
        for layer in cache.layers:
            assert layer.kv.enc["latent"].shape == (1, 1, 90, 48)
            assert layer.kv.enc["rope"].shape == (1, 2, 90, 4)
            assert layer.nbytes() == 90 * (48 + 2 * 4) * 4


# -- merging ----------------------------------------------------------------------------------

def naive_merge(k, counts, slots, merges):
    """Independent reference: lists, every similarity recomputed at every merge, one head."""
    ents = [(k[i].double(), int(counts[i]), int(slots[i])) for i in range(len(slots))]
    for _ in range(merges):
        sims = [float(torch.nn.functional.cosine_similarity(a[0], b[0], dim=0)) for a, b in zip(ents, ents[1:])]
        j = max(range(len(sims)), key=lambda i: (sims[i], -i))
        (ka, ca, _), (kb, cb, sb) = ents[j], ents[j + 1]
        ents[j:j + 2] = [((ca * ka + cb * kb) / (ca + cb), ca + cb, sb)]
    return torch.stack([e[0] for e in ents]), [e[1] for e in ents], [e[2] for e in ents]


@pytest.mark.parametrize("keys, counts, merges, slots, merged_counts", [
    # (2, 3) point the same way: they merge first, at the later slot
    ([[1, 0], [0, 1], [1, 1], [1, 1.1], [-1, 0]], [1, 1, 1, 1, 1], 1, [0, 1, 3, 4], [1, 1, 2, 1]),
    # then the merged entry is closest to its left neighbour
    ([[1, 0], [0, 1], [1, 1], [1, 1.1], [-1, 0]], [1, 1, 1, 1, 1], 2, [0, 3, 4], [1, 3, 1]),
    # counts carry over and weigh the average
    ([[1, 0], [0, 1], [1, 1], [1, 1.1], [-1, 0]], [2, 1, 3, 1, 1], 1, [0, 1, 3, 4], [2, 1, 4, 1]),
    # the last pair
    ([[1, 0], [0, 1], [-1, 0], [0, -1], [0, -1.01]], [1, 1, 1, 1, 1], 1, [0, 1, 2, 4], [1, 1, 1, 2]),
])
def test_merge_picks_the_most_similar_adjacent_pair(keys, counts, merges, slots, merged_counts):
    k = torch.tensor([keys], dtype=torch.float32)  # (1, S, 2)
    v = torch.arange(10, dtype=torch.float32).view(1, 5, 2)
    c = torch.tensor([counts], dtype=torch.int32)
    s = torch.arange(5).view(1, 5)
    k2, v2, c2, s2 = merge_adjacent(k, v, c, s, merges)
    assert s2[0].tolist() == slots and c2[0].tolist() == merged_counts
    ref_k, _, _ = naive_merge(k[0], c[0], s[0], merges)
    torch.testing.assert_close(k2[0].double(), ref_k, rtol=1e-6, atol=1e-6)
    # values are averaged over the same runs of tokens, with the same weights
    groups = [list(range(a + 1, b + 1)) for a, b in zip([-1] + slots[:-1], slots)]
    for i, g in enumerate(groups):
        w = c[0, g].double()
        torch.testing.assert_close(v2[0, i].double(), (w[:, None] * v[0, g].double()).sum(0) / w.sum())


@pytest.mark.parametrize("heads, S, merges", [(1, 12, 5), (3, 40, 17), (2, 9, 8)])
def test_merge_matches_an_independent_greedy_reference_per_head(heads, S, merges):
    g = torch.Generator().manual_seed(heads * 100 + S)
    k = torch.randn(heads, S, 8, generator=g)
    v = torch.randn(heads, S, 8, generator=g)
    c = torch.randint(1, 4, (heads, S), generator=g, dtype=torch.int32)
    s = torch.arange(S).expand(heads, S)
    k2, v2, c2, s2 = merge_adjacent(k, v, c, s, merges)
    for h in range(heads):
        ref_k, ref_c, ref_s = naive_merge(k[h], c[h], s[h], merges)
        assert s2[h].tolist() == ref_s and c2[h].tolist() == ref_c
        torch.testing.assert_close(k2[h].double(), ref_k, rtol=1e-5, atol=1e-5)
    assert (c2.sum(-1) == c.sum(-1)).all()  # every token is in exactly one entry


@pytest.mark.parametrize("budget", [0.5, 0.3, 0.9, 1.0])
def test_merge_keeps_its_budget_at_every_step(budget):
    """A batch of two rows, the first left-padded by 9 slots: 40-slot prefill, then 12 decode steps."""
    g = torch.Generator().manual_seed(1)
    B, H, D, L, pad = 2, 2, 16, 40, 9
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, :pad] = False
    step = StepState(valid=valid)
    layer = MergeLayer(step, budget)
    n = valid.sum(-1)
    for t in range(13):
        q = L if t == 0 else 1
        if t:
            step.valid = torch.cat([step.valid, torch.ones(B, 1, dtype=torch.bool)], dim=-1)
            n = n + 1
        keys, values = layer.update(torch.randn(B, H, q, D, generator=g), torch.randn(B, H, q, D, generator=g))
        target = torch.ceil(budget * n.double() - 1e-9).long()
        live = layer.valid.sum(-1)  # (B, H)
        assert (live == target[:, None]).all(), (t, live, target)
        assert len(layer) == int(target.max())
        if q == 1:  # decode reads the merged cache
            assert keys.shape[-2] == len(layer)
        for b in range(B):
            for h in range(H):
                m = layer.valid[b, h]
                assert int(layer.counts[b, h][m].sum()) == int(n[b])  # each token counted once
                sl = layer.slots[b, h][m]
                assert (sl[1:] > sl[:-1]).all() and int(sl[-1]) == step.valid.shape[1] - 1
        bias = layer.logit_bias()
        if budget == 1.0:
            assert bias is None and (layer.counts == 1).all()
        elif bias is not None:
            assert torch.equal(bias, torch.log(layer.counts.float()))
    assert layer.nbytes() == layer.k.numel() * 4 * 2 + layer.counts.numel() * 4


# -- end to end -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["svd-r32", "mla-120", "mla-64-r16", "merge-1"])
def test_no_op_settings_equal_none(tiny, reference, name):
    model, _ = tiny
    p, ref = reference
    tr = generate(model, parse_scheme(name), [p], NEW, logits=True)[0]
    assert tr.output_ids == ref.output_ids
    np.testing.assert_allclose(tr.logits, ref.logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, bytes_per_token_layer", [
    ("svd-r16", 2 * (16 + 16) * 4), ("svd-k8-v24", 2 * (8 + 24) * 4),
    ("mla-48", (48 + 2 * 4) * 4), ("mla-24-r1", (24 + 2 * 2) * 4),
    ("merge-0.5", None), ("merge-0.2", None),
])
def test_real_settings_differ_from_none_and_measure_their_memory(tiny, reference, name, bytes_per_token_layer):
    model, _ = tiny
    p, ref = reference
    scheme = parse_scheme(name)
    tr = generate(model, scheme, [p], NEW, logits=True)[0]
    diff = np.abs(tr.logits - ref.logits)
    assert np.isfinite(tr.logits).all()
    assert diff[0].max() < 1e-4  # the prompt forward attends over its own K/V exactly
    assert diff[1:].max() > 1e-3  # decode reads the compressed cache
    mem = tr.meta["memory"]
    if bytes_per_token_layer is None:  # merging: ceil(B·n) entries of K, V and an int32 count per head
        n = len(p) + NEW - 1
        bytes_per_token_layer = math.ceil(scheme.budget * n) * 2 * (2 * 32 * 4 + 4) / n
    assert mem["bytes_per_token_layer"] == pytest.approx(bytes_per_token_layer)
    assert mem["bytes_per_token_layer"] < mem["uncompressed_bytes_per_token_layer"]


@pytest.mark.parametrize("name", ["svd-r16", "mla-48", "merge-0.3"])
def test_left_padded_batch_matches_single_runs(tiny, heldout_ids, name):
    model, tok = tiny
    prompts = [prompt(heldout_ids, tok, 100), prompt(heldout_ids, tok, 51, offset=700)]
    scheme = parse_scheme(name)
    batched = generate(model, scheme, prompts, 4, logits=True, batch_size=2)
    for p, tb in zip(prompts, batched):
        single = generate(model, scheme, [p], 4, logits=True)[0]
        np.testing.assert_allclose(tb.logits, single.logits, atol=2e-4, rtol=0)


# -- calibration ------------------------------------------------------------------------------

def test_calibration_is_deterministic(capture):
    for fit in (fit_head_bases, lambda c: fit_joint_latent(c, pairs=2, latent=48)):
        a, b = fit(capture), fit(capture)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("name, fit_name", [("svd-r8", "svd-basis-v1"), ("mla-32-r3", "mla-c32-r3-v1")])
def test_calibration_is_cached_on_disk(tiny, monkeypatch, name, fit_name):
    model, _ = tiny
    scheme = parse_scheme(name)
    first = scheme.prepare(model)
    fingerprint = calibration.model_fingerprint(model)
    path = calibration.cache_dir() / fingerprint / f"{fit_name}.v{calibration.CALIBRATION_VERSION}.safetensors"
    assert path.is_file()

    def no_capture(*args, **kwargs):
        raise AssertionError("calibration recomputed instead of loaded")

    monkeypatch.setattr(calibration, "_memory", {})
    monkeypatch.setattr(calibration, "capture_kv", no_capture)
    second = scheme.prepare(model)
    assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)


@pytest.mark.parametrize("name", ["window-64+svd-r16", "h2o-0.1-0.1+svd-r8"])
def test_low_rank_holds_an_eviction_schemes_entries(tiny, heldout_ids, name):
    """svd is token-local, so it can be a hybrid's storage half: the eviction decides which
    tokens stay, the projection how they are kept."""
    model, tok = tiny
    p = prompt(heldout_ids, tok, 200)
    evict = name.split("+")[0]
    hybrid = generate(model, parse_scheme(name), [p], 4, logits=True)[0]
    alone = generate(model, parse_scheme(evict), [p], 4, logits=True)[0]
    assert parse_scheme(name).gene.algorithm == "hybrid"
    assert hybrid.meta["memory"]["bytes_per_token_layer"] < alone.meta["memory"]["bytes_per_token_layer"]
    assert np.abs(hybrid.logits[1:] - alone.logits[1:]).max() > 1e-4  # the projection shows at decode


def test_latent_refuses_to_be_a_hybrid_store():
    with pytest.raises(UnknownNameError, match="storage"):
        parse_scheme("window-64+mla-48")
