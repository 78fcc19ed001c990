"""Eviction and selection schemes: budgets, the entries kept, no-op settings, hybrids and genes.

Numeric checks feed synthetic K/V and attention probabilities straight into a layer and compare
what it keeps with an independent computation of the scheme's scores. Model checks use kvfp-tiny
on short prompts and test properties only (its weights may change).
"""

import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from kvfp.compressors import calibration, parse_scheme
from kvfp.compressors.eviction.duo import retrieval_heads
from kvfp.compressors.eviction.fastgen import POLICIES
from kvfp.compressors.eviction.pyramidkv import pyramid_schedule
from kvfp.compressors.layer import StepState
from kvfp.compressors.stores import CodecStore
from kvfp.errors import UnknownNameError
from kvfp.models.loading import PACKAGED
from kvfp.runner import attach, generate
from tests.conftest import prompt

L, NEW = 160, 3  # prompt length and decode steps of the model checks
_CFG = AutoConfig.from_pretrained(PACKAGED["kvfp-tiny"])
N_LAYERS, N_KV = _CFG.num_hidden_layers, _CFG.num_key_value_heads


@pytest.fixture(scope="module", autouse=True)
def small_calibration(tmp_path_factory):
    """DuoAttention calibrates: keep it small, and out of the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(tmp_path_factory.mktemp("kvfp-cache")))
        mp.setattr(calibration, "CALIB_WINDOWS", 1)
        mp.setattr(calibration, "CALIB_LEN", 256)
        mp.setattr(calibration, "_memory", {})
        yield


# -- a manual decode loop that inspects the cache after every forward -------------------------
def each_forward(model, scheme, ids, n_decode, inspect):
    """Prefill ``ids`` then decode ``n_decode`` greedy tokens; ``inspect(t, cache)`` after each
    forward (``t = 0`` after prefill). Returns the list of what ``inspect`` returned."""
    seen = []
    with attach(model, scheme) as att, torch.no_grad():
        cache = att.new_cache()
        inputs = torch.tensor([ids])
        mask = torch.ones_like(inputs)
        positions = torch.arange(len(ids))[None]
        pos = positions
        for t in range(n_decode + 1):
            cache.begin_step(mask, positions)
            out = model(input_ids=inputs, attention_mask=mask, position_ids=pos, cache=cache,
                        kvfp_cache=cache, use_cache=True, logits_to_keep=1)
            seen.append(inspect(t, cache))
            inputs = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(inputs)], dim=-1)
            pos = pos[:, -1:] + 1
            positions = torch.cat([positions, pos], dim=-1)
    return seen


def held_per_head(layer) -> list[int]:
    """Entries each KV head keeps and may attend (batch row 0)."""
    live = layer.live() if hasattr(layer, "live") else layer.valid  # window-N is a plain StoredLayer
    counts = live.sum(-1)[0]
    return counts.expand(N_KV).tolist()


def frac(x: float) -> int:
    return math.floor(x * L + 1e-9)


def budget_rows():
    """(scheme, kept entries per KV head after forward ``t`` in layer ``i``)."""
    pyr = pyramid_schedule(frac(0.5) - 32, L - 32, N_LAYERS)
    fastgen = {0: 1, 1: 1 + frac(0.3), 2: 1 + 2 * frac(0.3)}
    return [
        ("window-32", lambda t, i, layer: [32] * N_KV),
        ("streaming-s4-w28", lambda t, i, layer: [32] * N_KV),
        ("streaming-s0-w40", lambda t, i, layer: [40] * N_KV),
        ("h2o-0.1-0.1", lambda t, i, layer: [2 * frac(0.1)] * N_KV),
        ("h2o-0.15-0.05", lambda t, i, layer: [frac(0.15) + frac(0.05)] * N_KV),
        ("h2o-0.3", lambda t, i, layer: [2 * frac(0.15)] * N_KV),  # shorthand: 0.15 heavy + 0.15 recent
        ("h2o-0-0.1", lambda t, i, layer: [frac(0.1)] * N_KV),
        ("snapkv-0.5", lambda t, i, layer: [frac(0.5) + t] * N_KV),
        ("snapkv-0.2-w8-k3", lambda t, i, layer: [frac(0.2) + t] * N_KV),
        ("pyramidkv-0.5", lambda t, i, layer: [32 + pyr[i] + t] * N_KV),
        ("tova-0.5", lambda t, i, layer: [frac(0.5)] * N_KV),
        ("tova-0.1", lambda t, i, layer: [frac(0.1)] * N_KV),
        ("knorm-0.25", lambda t, i, layer: [frac(0.25)] * N_KV),
        ("vatp-0.5", lambda t, i, layer: [2 * frac(0.25)] * N_KV),
        ("vatp-0.2-s8", lambda t, i, layer: [2 * frac(0.1)] * N_KV),
        ("duo-0.5-s4-w28", lambda t, i, layer: [32 if s else L + t for s in layer.streaming.tolist()]),
        ("fastgen-t0.5", lambda t, i, layer: [fastgen.get(p, L + t) for p in layer.policy[0].tolist()]),
    ]


@pytest.mark.parametrize("name, expected", budget_rows(), ids=[r[0] for r in budget_rows()])
def test_keeps_exactly_its_budget_at_every_step(tiny, heldout_ids, name, expected):
    model, tok = tiny
    p = prompt(heldout_ids, tok, L)
    rows = each_forward(model, parse_scheme(name), p, NEW, lambda t, cache: [
        (held_per_head(layer), expected(t, i, layer)) for i, layer in enumerate(cache.layers)])
    for t, per_layer in enumerate(rows):
        for i, (got, want) in enumerate(per_layer):
            assert got == want, f"step {t}, layer {i}: kept {got}, budget {want}"


def test_pyramid_schedule_averages_the_budget_and_shrinks_with_depth():
    for selected, prefix, m in [(68, 168, 6), (992, 2016, 6), (1500, 2016, 6), (7, 100, 3), (1, 5, 32)]:
        counts = pyramid_schedule(selected, prefix, m)
        assert sum(counts) == selected * m
        assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
        assert max(counts) <= prefix and min(counts) >= 0
    assert pyramid_schedule(50, 50, 6) == [50] * 6  # budget 1.0: every layer keeps everything


def test_streaming_keeps_sinks_and_window_by_position(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, L)
    slots = each_forward(model, parse_scheme("streaming-s4-w28"), p, NEW,
                         lambda t, cache: [layer.slots[0, 0].tolist() for layer in cache.layers])
    for t, per_layer in enumerate(slots):
        end = L + t
        for got in per_layer:
            assert got == list(range(4)) + list(range(end - 28, end))


def test_duo_heads_keep_everything_or_sinks_and_window(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, L)

    def kept(t, cache):
        out = []
        for layer in cache.layers:
            live = layer.live()[0].expand(N_KV, -1)
            slots = layer.slots[0].expand(N_KV, -1)
            out.append([(bool(s), sorted(slots[h][live[h]].tolist()))
                        for h, s in enumerate(layer.streaming.tolist())])
        return out

    n_streaming = 0
    for t, per_layer in enumerate(each_forward(model, parse_scheme("duo-0.5-s4-w28"), p, NEW, kept)):
        end = L + t
        for heads in per_layer:
            for streaming, slots in heads:
                n_streaming += streaming
                assert slots == (list(range(4)) + list(range(end - 28, end)) if streaming else list(range(end)))
    assert n_streaming == (NEW + 1) * N_LAYERS * N_KV // 2


def test_duo_calibration_is_deterministic_and_ranks_heads(tiny):
    model, _ = tiny
    a = parse_scheme("duo-0.5-s4-w28").prepare(model)["retrieval"]
    calibration._memory.clear()  # reload from the cache file
    b = parse_scheme("duo-0.5-s4-w28").prepare(model)["retrieval"]
    assert torch.equal(a, b) and int(a.sum()) == N_LAYERS * N_KV // 2
    mass = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert retrieval_heads(mass, 0.5).tolist() == [[False, True], [True, False]]
    assert retrieval_heads(mass, 0.25).tolist() == [[False, True], [False, False]]


# -- no-op settings and real settings on the model ---------------------------------------------
NOOPS = ["streaming-s4-w200", "h2o-0.5-0.5", "h2o-1", "snapkv-1", "pyramidkv-1", "tova-1", "knorm-1",
         "vatp-1", "duo-1", "quest-b16-1", "fastgen-t1"]


@pytest.fixture(scope="module")
def none_logits(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, L)
    return p, generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]


@pytest.mark.parametrize("name", NOOPS)
def test_noop_setting_equals_none(tiny, none_logits, name):
    model, _ = tiny
    p, ref = none_logits
    tr = generate(model, parse_scheme(name), [p], NEW, logits=True)[0]
    assert tr.output_ids == ref.output_ids
    np.testing.assert_allclose(tr.logits, ref.logits, atol=1e-4, rtol=0)


REAL = ["streaming-s4-w60", "h2o-0.1-0.1", "snapkv-0.5", "pyramidkv-0.5", "tova-0.5", "knorm-0.5",
        "vatp-0.5", "duo-0.5-s4-w28", "quest-b16-0.25", "fastgen-t0.5"]


@pytest.mark.parametrize("name", REAL)
def test_real_setting_differs_from_none_and_keeps_less(tiny, none_logits, name):
    model, _ = tiny
    p, ref = none_logits
    tr = generate(model, parse_scheme(name), [p], NEW, logits=True)[0]
    assert np.abs(tr.logits - ref.logits).max() > 1e-3
    mem = tr.meta["memory"]
    if not name.startswith("quest"):  # Quest keeps everything, plus its block metadata
        assert mem["bytes_per_token_layer"] < mem["uncompressed_bytes_per_token_layer"]


def test_duo_with_no_retrieval_heads_is_streaming(tiny, none_logits):
    model, _ = tiny
    p, _ = none_logits
    a = generate(model, parse_scheme("duo-0-s4-w28"), [p], NEW, logits=True)[0]
    b = generate(model, parse_scheme("streaming-s4-w28"), [p], NEW, logits=True)[0]
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["streaming-s4-w28", "h2o-0.1-0.1", "snapkv-0.5", "tova-0.5", "fastgen-t0.5",
                                  "quest-b16-0.25"])
def test_left_padded_batch_matches_single_runs(tiny, heldout_ids, name):
    model, tok = tiny
    prompts = [prompt(heldout_ids, tok, 130), prompt(heldout_ids, tok, 97, offset=400)]
    scheme = parse_scheme(name)
    batched = generate(model, scheme, prompts, NEW, logits=True, batch_size=2)
    for p, tb in zip(prompts, batched):
        single = generate(model, scheme, [p], NEW, logits=True)[0]
        np.testing.assert_allclose(tb.logits, single.logits, atol=2e-4, rtol=0)


@pytest.mark.parametrize("evict", ["h2o-0.2", "snapkv-0.5"])
def test_hybrid_stores_quantized_entries(tiny, none_logits, evict):
    model, _ = tiny
    p, _ = none_logits
    plain = generate(model, parse_scheme(evict), [p], NEW, logits=True)[0]
    hybrid = generate(model, parse_scheme(f"{evict}+int4-pertoken"), [p], NEW, logits=True)[0]
    bpt = lambda tr: tr.meta["memory"]["bytes_per_token_layer"]  # noqa: E731
    assert bpt(hybrid) < 0.4 * bpt(plain)  # int4 codes + a scale per token instead of float32
    assert np.abs(hybrid.logits - plain.logits).max() > 0
    with attach(model, parse_scheme(f"{evict}+int4-pertoken")) as att:
        assert all(isinstance(layer.kv, CodecStore) for layer in att.new_cache().layers)


# -- independent computations on synthetic tensors ---------------------------------------------
H, HKV, D = 4, 2, 8  # two query heads per KV head


def synthetic_layer(name, n, seed=0):
    """A layer of ``name`` after a prefill of ``n`` random entries (no model involved)."""
    g = torch.Generator().manual_seed(seed)
    step = StepState(valid=torch.ones(1, n, dtype=torch.bool))
    layer = parse_scheme(name).make_layer(0, 1, step)
    k, v = torch.randn(1, HKV, n, D, generator=g), torch.randn(1, HKV, n, D, generator=g)
    layer.update(k, v)
    return layer, step, k, v, g


def decode_one(layer, step, g):
    step.valid = torch.ones(1, step.valid.shape[1] + 1, dtype=torch.bool)
    k, v = torch.randn(1, HKV, 1, D, generator=g), torch.randn(1, HKV, 1, D, generator=g)
    layer.update(k, v)
    return k, v


def random_probs(g, q, S):
    """Causal attention probabilities ``(1, H, q, S)``, the queries being the last q slots."""
    logits = torch.randn(1, H, q, S, generator=g) * 2
    qi = torch.arange(S - q, S)[:, None]
    logits = logits.masked_fill(torch.arange(S)[None, :] > qi, -torch.inf)
    return torch.softmax(logits, -1)


def kept_slots(layer):
    live = layer.live()[0].expand(HKV, -1)
    slots = layer.slots[0].expand(HKV, -1)
    return [sorted(slots[h][live[h]].tolist()) for h in range(HKV)]


def top(scores: dict, n: int) -> set:
    return set(sorted(scores, key=lambda j: (-scores[j], j))[:n])


@pytest.mark.parametrize("name, heavy, recent, sinks, value", [
    ("h2o-0.2-0.1", 8, 4, 0, False),
    ("h2o-0.1-0.25", 4, 10, 0, False),
    ("vatp-0.5", 10, 10, 4, True),
    ("vatp-0.3-s2", 6, 6, 2, True),
])
def test_accumulated_attention_keeps_independently_computed_tokens(name, heavy, recent, sinks, value):
    n = 40
    layer, step, k, v, g = synthetic_layer(name, n)
    values = {j: v[0, :, j].abs().sum(-1) for j in range(n)}  # per KV head L1 norms
    acc = {}  # slot -> (HKV,) accumulated attention, summed over each group's query heads
    for t in range(4):
        S = len(layer)
        probs = random_probs(g, n if t == 0 else 1, S)
        slots = layer.slots[0].expand(HKV, -1)
        for h in range(HKV):
            for e in range(S):
                j = int(slots[h, e])
                acc.setdefault(j, torch.zeros(HKV))[h] += probs[0, 2 * h:2 * h + 2, :, e].sum()
        expect = []
        last = n + t
        for h in range(HKV):
            alive = [int(j) for j in slots[h]]
            recent_set = {j for j in alive if j >= last - recent}
            forced = recent_set | {j for j in alive if j < sinks}
            score = {j: float(acc[j][h] * (values[j][h] if value else 1)) for j in alive if j not in forced}
            expect.append(sorted(forced | top(score, heavy + recent - len(forced))))
        layer.observe(probs)
        assert kept_slots(layer) == expect, f"step {t}"
        nk, nv = decode_one(layer, step, g)
        values[n + t] = nv[0, :, 0].abs().sum(-1)


@pytest.mark.parametrize("name, window, kernel, budget", [
    ("snapkv-0.5-w8-k5", 8, 5, 0.5),
    ("snapkv-0.25-w4-k3", 4, 3, 0.25),
    ("snapkv-0.3-w6-k1", 6, 1, 0.3),
])
def test_snapkv_keeps_independently_computed_tokens(name, window, kernel, budget):
    n = 48
    layer, step, *_ , g = synthetic_layer(name, n)
    probs = random_probs(g, n, n)
    layer.observe(probs)
    p = probs[0].numpy()
    keep = math.floor(budget * n)
    for h in range(HKV):
        votes = p[2 * h:2 * h + 2, n - window:, : n - window].sum(1).mean(0)  # (n - window,)
        padded = np.concatenate([np.zeros(kernel // 2), votes, np.zeros(kernel // 2)])
        pooled = np.array([padded[j:j + kernel].sum() / kernel for j in range(n - window)])
        chosen = set(np.argsort(-pooled, kind="stable")[: keep - window].tolist())
        assert kept_slots(layer)[h] == sorted(chosen | set(range(n - window, n)))
    assert not layer.wants_scores  # decode appends with plain attention
    decode_one(layer, step, g)
    assert [len(s) for s in kept_slots(layer)] == [keep + 1] * HKV


def test_tova_keeps_what_the_last_query_attends_to_averaged_over_heads():
    n, keep = 30, 12
    layer, step, *_, g = synthetic_layer("tova-0.4", n)
    for t in range(4):
        S = len(layer)
        probs = random_probs(g, n if t == 0 else 1, S)
        slots = layer.slots[0, 0].tolist()  # one selection shared by the layer's heads
        score = {slots[e]: float(probs[0, :, -1, e].mean()) for e in range(S)}
        layer.observe(probs)
        assert kept_slots(layer) == [sorted(top(score, keep))] * HKV, f"step {t}"
        decode_one(layer, step, g)


def test_key_norm_keeps_the_smallest_keys():
    n, keep = 30, 15
    g = torch.Generator().manual_seed(1)
    step = StepState(valid=torch.ones(1, n, dtype=torch.bool))
    layer = parse_scheme("knorm-0.5").make_layer(0, 1, step)
    k = torch.randn(1, HKV, n, D, generator=g) * torch.rand(1, 1, n, 1, generator=g) * 3
    layer.update(k, torch.randn(1, HKV, n, D, generator=g))  # prefill: evicts at its end
    norms = {j: k[0, :, j].norm(dim=-1) for j in range(n)}
    alive = [list(range(n))] * HKV
    for t in range(4):
        expect = [sorted(top({j: -float(norms[j][h]) for j in alive[h]}, keep)) for h in range(HKV)]
        assert kept_slots(layer) == expect, f"step {t}"
        nk, _ = decode_one(layer, step, g)  # one in, one out
        norms[n + t] = nk[0, :, 0].norm(dim=-1)
        alive = [e + [n + t] for e in expect]


def test_fastgen_picks_per_head_policies_from_the_attention_profile():
    n = 40
    layer, step, *_, g = synthetic_layer("fastgen", n)
    probs = random_probs(g, n, n)
    probs[:, :2] = 0
    probs[:, :2, :, 0] = 1  # KV head 0's queries attend only to the first token
    probs[:, 2:] = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]  # head 1: uniform
    layer.observe(probs)
    assert [POLICIES[p] for p in layer.policy[0].tolist()] == ["special", "full"]
    assert kept_slots(layer) == [[0], list(range(n))]
    full = layer.kv.nbytes()
    assert layer.nbytes() < 0.6 * full  # head 0's padding entries are not counted
    decode_one(layer, step, g)
    layer.observe(random_probs(g, 1, len(layer)))
    assert kept_slots(layer) == [[0], list(range(n + 1))]


def test_quest_attends_to_the_blocks_an_independent_bound_selects():
    n, block = 70, 16
    layer, step, *_, g = synthetic_layer(f"quest-b{block}-0.4", n)
    assert layer.query_mask(torch.randn(1, H, n, D)) is None  # prefill attends in full
    decode_one(layer, step, g)
    keys = layer.kv.keys()[0]  # (HKV, 71, D)
    query = torch.randn(1, H, 1, D, generator=g)
    mask = layer.query_mask(query)[0, :, 0]  # (H, 71)
    n_blocks = math.ceil((n + 1) / block)
    for h in range(H):
        kb = keys[h // 2]
        q = query[0, h, 0]
        bound = [float(torch.maximum(q * kb[b * block:(b + 1) * block].max(0).values,
                                     q * kb[b * block:(b + 1) * block].min(0).values).sum())
                 for b in range(n_blocks)]
        for b in range(n_blocks):  # it bounds every logit of its block
            assert float((kb[b * block:(b + 1) * block] @ q).max()) <= bound[b] + 1e-5
        bound[-1] = math.inf  # the current token's block always counts
        chosen = top(dict(enumerate(bound)), math.ceil(0.4 * n_blocks))
        expect = [j for j in range(n + 1) if j // block in chosen]
        assert torch.nonzero(mask[h]).flatten().tolist() == expect
    meta = n_blocks * HKV * 2 * D * 4
    assert layer.nbytes() == layer.kv.nbytes() + meta


# -- names and genes ----------------------------------------------------------------------------
GENES = [
    ("streaming-s4-w508", "position", "both", {"sinks": 4, "window": 508}),
    ("h2o-0.1-0.1", "attention_cumulative", "both", {"budget": 0.2, "heavy": 0.1, "recent": 0.1}),
    ("snapkv-0.5", "attention_window", "prefill", {"budget": 0.5, "window": 32, "kernel": 5}),
    ("pyramidkv-0.5", "attention_window", "prefill", {"budget": 0.5, "window": 32, "kernel": 5, "beta": 20}),
    ("tova-0.5", "attention_last", "both", {"budget": 0.5}),
    ("knorm-0.5", "key_norm", "both", {"budget": 0.5}),
    ("vatp-0.5", "value_aware", "both", {"budget": 0.5, "sinks": 4}),
    ("duo-0.5", "position", "both", {"retrieval": 0.5, "sinks": 4, "window": 252}),
    ("quest-b16-0.25", "query_aware_block", "decode", {"block": 16, "budget": 0.25}),
    ("fastgen", "attention_cumulative", "both", {"threshold": 0.95, "frequent": 0.3, "local": 0.3, "special": 1}),
]


@pytest.mark.parametrize("name, importance, phase, params", GENES, ids=[g[0] for g in GENES])
def test_genes(name, importance, phase, params):
    s = parse_scheme(name)
    assert s.name == name and s.role == "eviction"
    g = s.gene
    assert (g.algorithm, g.importance, g.phase, g.params) == ("eviction", importance, phase, params)
    h = parse_scheme(f"{name}+int4-pertoken").gene
    assert (h.algorithm, h.importance, h.params["bits"]) == ("hybrid", importance, 4)


@pytest.mark.parametrize("text, name", [
    ("h2o-0.2", "h2o-0.1-0.1"), ("h2o-1", "h2o-0.5-0.5"), ("snapkv-0.5-w32-k5", "snapkv-0.5"),
    ("snapkv-.25-w16", "snapkv-0.25-w16"), ("pyramidkv-1.0", "pyramidkv-1"), ("vatp-0.5-s4", "vatp-0.5"),
    ("duo-0.5-s4-w252", "duo-0.5"), ("duo-0.25-s8-w120", "duo-0.25-s8-w120"), ("fastgen-t0.95", "fastgen"),
    ("fastgen-t0.8", "fastgen-t0.8"), ("quest-b32-0.5", "quest-b32-0.5"), ("streaming-s0-w64", "streaming-s0-w64"),
])
def test_names_parse_to_canonical_form(text, name):
    s = parse_scheme(text)
    assert s.name == name and parse_scheme(name) == s


@pytest.mark.parametrize("bad, hint", [
    ("h2o-0.8-0.5", r"heavy \+ recent"), ("h2o-0", r"heavy \+ recent"), ("snapkv-0", "budget"),
    ("snapkv-1.5", "budget"), ("snapkv-0.5-k4", "odd"), ("tova-0", "budget"), ("knorm-2", "budget"),
    ("quest-b0-0.25", "block"), ("quest-b16-0", "fraction"), ("duo-1.5", "retrieval"),
    ("fastgen-t0", "threshold"), ("streaming-s4-w0", "window"), ("vatp-1.2", "budget"),
])
def test_bad_parameters_explain(bad, hint):
    with pytest.raises(UnknownNameError, match=hint):
        parse_scheme(bad)
