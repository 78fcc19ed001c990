"""Shared-prefill replay (:mod:`kvfp.runner.shared`) against the unshared path, on every catalogue scheme.

The unshared path is :func:`kvfp.runner.replay` batching the same rows: sharing the prefill between
rows and schemes may change numbers only by float rounding. Prompts are long enough (520 tokens)
for every eviction budget of the catalogue to act.
"""

import numpy as np
import pytest

from kvfp.compressors import canonical_names, parse_scheme
from kvfp.fingerprint.observation import Observation
from kvfp.fingerprint.reference import ReferenceRunner
from kvfp.runner import replay
from kvfp.runner.shared import PrefillStore, prefill_untouched, replay_shared
from tests.conftest import prompt

L, STEPS = 520, 4


@pytest.fixture(scope="module")
def rows(tiny_eager, heldout_ids):
    _, tok = tiny_eager
    a, b = prompt(heldout_ids, tok, L), prompt(heldout_ids, tok, L, offset=900)
    rng = np.random.default_rng(0)
    conts = [rng.integers(100, 4000, size=n).tolist() for n in (STEPS, STEPS, STEPS - 1)]
    return [a, b, a], conts


@pytest.fixture(scope="module")
def store():
    return PrefillStore()


@pytest.mark.parametrize("name", canonical_names())
def test_shared_equals_unshared(tiny_eager, rows, store, name):
    model, _ = tiny_eager
    prompts, conts = rows
    scheme = parse_scheme(name)
    want = replay(model, scheme, prompts, conts, topk=1, logits=True, batch_size=len(prompts))
    got = replay_shared(model, scheme, prompts, conts, store=store)
    for tr, (logits, plp) in zip(want, got):
        assert logits.shape == tr.logits.shape
        np.testing.assert_allclose(logits, tr.logits, rtol=0, atol=1e-4)
        plp_want = np.array([np.nan if x is None else x for x in tr.prompt_logprobs], dtype=np.float32)
        np.testing.assert_allclose(plp, plp_want, rtol=0, atol=1e-4)
    # the two distinct prompts were prefilled under none once, whatever number of schemes used them
    assert store.computed == 2


def test_schemes_that_leave_prefill_untouched_are_most_of_the_catalogue():
    shared = [n for n in canonical_names() if prefill_untouched(parse_scheme(n))]
    assert "int4-pertoken" in shared and "kivi-2" in shared and "ggml-q8_0" not in shared
    assert "snapkv-0.5" not in shared  # compresses at the end of the prefill
    assert len(shared) >= 20


def test_runner_batches_a_probes_observations_together(tiny_eager, rows, tmp_path, monkeypatch):
    """Observations arrive interleaved across prompts; the cache fills prompt by prompt."""
    import kvfp.runner

    model, _ = tiny_eager
    prompts, conts = rows
    obs = [Observation(prompt_ids=p, output_ids=c, logits=np.zeros((len(c), 1))) for p, c in zip(prompts, conts)]
    calls = []
    real = kvfp.runner.replay_shared
    monkeypatch.setattr("kvfp.runner.replay_shared",
                        lambda m, s, ps, cs, **k: calls.append(len({tuple(p) for p in ps})) or real(m, s, ps, cs, **k))
    done = []
    runner = ReferenceRunner(model, ["int4-pertoken", "h2o-0.1-0.1"], cache_dir=tmp_path, noise=False, batch_size=2,
                             progress=lambda d, t: done.append((d, t)))
    shared_refs = list(runner.references(obs))
    # rows a, a go first as one single-prompt batch, then b; three jobs (ref, two candidates)
    assert calls == [1, 1] * 3
    assert done[0] == (0, 9) and done[-1] == (9, 9)
    plain = ReferenceRunner(model, ["int4-pertoken", "h2o-0.1-0.1"], cache_dir=None, noise=False, share=False)
    for s, p in zip(shared_refs, plain.references(obs)):
        for name in ("int4-pertoken", "h2o-0.1-0.1"):
            np.testing.assert_allclose(s.candidates[name].logits, p.candidates[name].logits, rtol=0, atol=1e-4)
        np.testing.assert_allclose(s.ref.logits, p.ref.logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["h2o-0.1-0.1", "snapkv-0.5", "ggml-q4_0"])
def test_one_prompt_reaches_every_row_as_a_view(tiny_eager, rows, name):
    """Every row of one prompt: the prefill's K/V and attention probabilities are handed over as
    views of the one distinct row (the path the other test, with two prompts, does not take)."""
    model, _ = tiny_eager
    (a, _, _), conts = rows
    scheme = parse_scheme(name)
    want = replay(model, scheme, [a, a], conts[:2], topk=1, logits=True, batch_size=2)
    got = replay_shared(model, scheme, [a, a], conts[:2], store=PrefillStore())
    for tr, (logits, _) in zip(want, got):
        np.testing.assert_allclose(logits, tr.logits, rtol=0, atol=1e-4)
