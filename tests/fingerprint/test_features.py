"""Features: shift invariance at top-k tiers, tier purity, fixed NaN-free vectors, and that they
measure what they claim (on kvfp-tiny, with expectations derived from the model at test time)."""

import copy

import numpy as np
import pytest

from kvfp.compressors import parse_scheme
from kvfp.errors import KvfpError
from kvfp.fingerprint.features import feature_names, features
from kvfp.fingerprint.observation import TIERS, from_trace
from kvfp.fingerprint.reference import ReferenceRunner
from kvfp.probes import Probe
from kvfp.runner import generate
from tests.conftest import prompt

CANDS = ["none", "int4-pertoken", "window-32"]
NEW = 8


@pytest.fixture(scope="module")
def runner(tiny_eager):
    model, _ = tiny_eager
    return ReferenceRunner(model, CANDS, cache_dir=None)


@pytest.fixture(scope="module")
def observed(tiny_eager, heldout_ids):
    """One observation per scheme of the same prompt (full logits, top-20, prompt logprobs)."""
    model, tok = tiny_eager
    p = prompt(heldout_ids, tok, 90, offset=2000)
    return {name: from_trace(generate(model, parse_scheme(name), [p], NEW, logits=True)[0]) for name in CANDS}


@pytest.fixture(scope="module")
def refs(observed, runner):
    return {name: runner.reference(o) for name, o in observed.items()}


def shifted(obs, seed):
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(obs)
    shift = rng.uniform(-5, 5, size=obs.steps)
    out.topk_logprobs = [[v + s for v in row] for row, s in zip(obs.topk_logprobs, shift)]
    return out


@pytest.mark.parametrize("tier", ["topk-20", "topk-5"])
def test_topk_features_ignore_a_constant_per_position(observed, refs, tier):
    obs = observed["int4-pertoken"].restrict(tier)
    ref = refs["int4-pertoken"]
    base = features(obs, ref, tier)
    np.testing.assert_allclose(features(shifted(obs, 0), ref, tier), base, rtol=1e-9, atol=1e-9)
    # a change within a position is a real logit difference: the features must see it
    bent = copy.deepcopy(obs)
    bent.topk_logprobs = [[v + 0.3 * j for j, v in enumerate(row)] for row in obs.topk_logprobs]
    assert not np.allclose(features(bent, ref, tier), base, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tier", TIERS)
def test_features_read_only_what_the_tier_returns(observed, refs, tier):
    obs, ref = observed["int4-pertoken"], refs["int4-pertoken"]
    x = features(obs, ref, tier)
    assert np.array_equal(x, features(obs.restrict(tier), ref, tier))
    assert x.shape == (len(feature_names(tier, CANDS)),) and np.all(np.isfinite(x))
    # scrambling what the tier does not return changes nothing
    other = copy.deepcopy(obs)
    if tier != "logits":
        other.logits = other.logits[:, ::-1].copy()
    if not tier.startswith("topk-"):
        other.topk_logprobs = [[v - 0.5 * j for j, v in enumerate(r)] for r in other.topk_logprobs]
    if tier != "prompt":
        other.prompt_logprobs = [None] + [-1.0] * (len(other.prompt_ids) - 1)
    if tier.startswith("topk-"):  # top-k comes from the returned lists, not from the logits
        other.logits = None
    assert np.array_equal(features(other, ref, tier), x)


def named(tier, obs, ref, probe=None):
    return dict(zip(feature_names(tier, CANDS), features(obs, ref, tier, probe)))


@pytest.mark.parametrize("tier", ["logits", "topk-20", "topk-5", "prompt", "tokens"])
def test_the_true_scheme_is_the_closest_candidate(observed, refs, tier):
    fam = "tokens" if tier == "prompt" else tier  # decode-only schemes leave the prompt exact
    for name in CANDS:
        f = named(tier, observed[name], refs[name])
        fits = {c: f[f"cand.{fam}.fit[{c}]"] for c in CANDS}
        # kvfp's own replay of the observed scheme reproduces it exactly; nothing fits better
        assert fits[name] == min(fits.values()), (name, fits)


def test_departures_are_measured_in_noise_units(observed, refs, tiny_eager, heldout_ids, runner):
    f_none = named("logits", observed["none"], refs["none"])
    f_int4 = named("logits", observed["int4-pertoken"], refs["int4-pertoken"])
    assert f_none["logits.js"] < 0.01  # the reference replays the observation: no departure at all
    assert f_int4["logits.js"] > 1.0  # int4 keys and values move the outputs beyond bf16's noise
    # an uncompressed model served in bf16 sits at about one noise unit, far below int4
    model, tok = tiny_eager
    bf16 = copy.deepcopy(model).to(dtype=__import__("torch").bfloat16)
    p = list(observed["none"].prompt_ids)
    obs = from_trace(generate(bf16, parse_scheme("none"), [p], NEW, logits=True)[0])
    f_bf16 = named("logits", obs, runner.reference(obs))
    assert f_bf16["logits.js"] < f_int4["logits.js"] / 2
    assert f_bf16["cand.logits.fit[none]"] < f_bf16["cand.logits.fit[int4-pertoken]"]


def test_span_profiles_follow_the_probe(observed, refs):
    obs, ref = observed["window-32"], refs["window-32"]
    n = len(obs.prompt_ids)
    probe = Probe(id="p", family="needle", seed=0, n_tokens=n, ids=list(obs.prompt_ids),
                  spans={"needle": [10, 14]})
    with_probe = named("logits", obs, ref, probe)
    without = named("logits", obs, ref)
    assert without["logits.frac.nospan"] == 1.0
    # every step lies n-10+t tokens past the needle start: 80..87 → the [64, 256) bucket
    assert with_probe["logits.frac.d64-256"] == 1.0 and with_probe["logits.frac.nospan"] == 0.0
    assert with_probe["logits.js.d64-256"] == pytest.approx(with_probe["logits.js"], rel=1e-9)
    bad = Probe(id="q", family="needle", seed=0, n_tokens=n - 1, ids=list(obs.prompt_ids[:-1]))
    with pytest.raises(KvfpError, match="prompt tokens"):
        features(obs, ref, "logits", bad)


def test_prompt_tier_sees_prefill_schemes_only(observed, refs):
    # window-32 acts at prefill, int4-pertoken only at decode (the scheme's phase)
    assert named("prompt", observed["int4-pertoken"], refs["int4-pertoken"])["prompt.mabs"] < 0.01
    assert named("prompt", observed["window-32"], refs["window-32"])["prompt.mabs"] > 1.0


def test_reference_cache_serves_the_same_replays(tiny_eager, observed, tmp_path, monkeypatch):
    model, _ = tiny_eager
    obs = observed["int4-pertoken"]
    first = ReferenceRunner(model, ["int4-pertoken"], cache_dir=tmp_path).reference(obs)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3  # reference, noise, candidate
    second = ReferenceRunner(model, ["int4-pertoken"], cache_dir=tmp_path, batch_size=4)
    with monkeypatch.context() as m:  # a cache hit replays nothing: no model run, no bf16 copy
        m.setattr("kvfp.runner.replay", lambda *a, **k: pytest.fail("replayed despite the cache"))
        m.setattr("kvfp.runner.replay_shared", lambda *a, **k: pytest.fail("replayed despite the cache"))
        m.setattr(second, "_noise", lambda: pytest.fail("built the noise model despite the cache"))
        again = second.reference(obs)
    assert np.array_equal(again.ref.logits, first.ref.logits)
    assert np.array_equal(again.noise.logits, first.noise.logits)
    assert np.array_equal(again.candidates["int4-pertoken"].logits, first.candidates["int4-pertoken"].logits)
    np.testing.assert_array_equal(again.ref.prompt_logprobs, first.ref.prompt_logprobs)
    other = copy.deepcopy(obs)
    other.output_ids = other.output_ids[:-1] + [(other.output_ids[-1] + 1) % model.config.vocab_size]
    second.reference(other)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 6  # other tokens, other replays


def test_identical_tokens_are_replayed_once(tiny_eager, observed, monkeypatch):
    import kvfp.runner

    model, _ = tiny_eager
    calls = []
    real = kvfp.runner.replay_shared
    monkeypatch.setattr("kvfp.runner.replay_shared", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    obs = observed["int4-pertoken"]
    twin = copy.deepcopy(obs)
    twin.logits = None  # another tier of the same tokens: the same replays serve it
    a, b = ReferenceRunner(model, ["int4-pertoken"], cache_dir=None, noise=False).references([obs, twin])
    assert calls == [1, 1]  # reference and candidate, one prompt each
    assert a.ref is b.ref and np.array_equal(a.candidates["int4-pertoken"].logits, b.candidates["int4-pertoken"].logits)


def test_reference_refuses_bad_settings(tiny_eager):
    model, _ = tiny_eager
    with pytest.raises(KvfpError, match="unknown scheme"):
        ReferenceRunner(model, ["int4-nope"], cache_dir=None)
    bf16 = copy.deepcopy(model).to(dtype=__import__("torch").bfloat16)
    with pytest.raises(KvfpError, match="float32"):
        ReferenceRunner(bf16, [], cache_dir=None)


@pytest.fixture(scope="module")
def served_bf16(tiny_eager, observed):
    """``none`` and ``int4-pertoken`` served by the model cast to bf16 (sdpa): not kvfp's numerics."""
    import torch

    model, _ = tiny_eager
    bf16 = copy.deepcopy(model).to(dtype=torch.bfloat16)
    bf16.set_attn_implementation("sdpa")
    p = list(observed["none"].prompt_ids)
    return {name: from_trace(generate(bf16, parse_scheme(name), [p], NEW, logits=True)[0])
            for name in ("none", "int4-pertoken")}


@pytest.mark.parametrize("tier", ["logits", "topk-20"])
def test_gain_names_the_served_scheme_through_bf16_noise(served_bf16, runner, tier):
    f = named(tier, served_bf16["int4-pertoken"], runner.reference(served_bf16["int4-pertoken"]))
    gains = {c: f[f"cand.{tier}.gain[{c}]"] for c in CANDS}
    assert abs(gains["none"]) < 1e-9  # none adds nothing to the noise: the baseline itself
    # bf16 arithmetic differs between CPUs: the gain was above 0.5 on a Zen 4 with avx512_bf16 and
    # 0.483 on an AVX2-only EPYC; what is asserted is that int4's departure explains a large share
    assert max(gains, key=gains.get) == "int4-pertoken" and gains["int4-pertoken"] > 0.4, gains
    assert 0.0 < f[f"cand.{tier}.expl[int4-pertoken]"] <= 1.0
    # an uncompressed bf16 endpoint: subtracting int4's departure makes the residual worse
    g = named(tier, served_bf16["none"], runner.reference(served_bf16["none"]))
    assert g[f"cand.{tier}.gain[int4-pertoken]"] < 0.0
