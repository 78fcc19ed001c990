"""End to end on kvfp-tiny: collect traces, train on some prompts, identify another prompt's trace.

The test side is served the way an endpoint differs from the reference: bfloat16 weights, sdpa
attention and batched requests (the reference replays in float32 with eager attention, one prompt
at a time), so the classifier must name the scheme from traces that kvfp's own numerics did not
produce, of prompts it was never shown.
"""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from kvfp.compressors import parse_scheme
from kvfp.fingerprint.features import feature_matrix
from kvfp.fingerprint.observation import from_trace
from kvfp.fingerprint.persist import TrainedFingerprinter, load_fingerprinter, make_manifest, save_fingerprinter
from kvfp.fingerprint.reference import ReferenceRunner
from kvfp.models import load
from kvfp.runner import generate
from tests.conftest import prompt

# distinct enough to be robust: nothing, mild and strong quantization, and a window that bites
SCHEMES = ["none", "int4-pertoken", "int2-pertoken", "window-32"]
TIERS = ["logits", "topk-20"]
N_PROMPTS, N_TEST, LENGTH, NEW = 5, 2, 96, 8


@pytest.fixture(scope="module")
def served(tiny_eager):
    model, _ = load("kvfp-tiny", dtype="bfloat16", attn="sdpa")
    return model


def collect(model, prompts, batch_size=1):
    obs, labels = [], []
    for name in SCHEMES:
        for tr in generate(model, parse_scheme(name), prompts, NEW, logits=True, batch_size=batch_size):
            obs.append(from_trace(tr))
            labels.append(name)
    return obs, np.array(labels)


@pytest.mark.slow
def test_identify_a_held_out_prompt_served_with_nuisance(tiny_eager, served, heldout_ids, tmp_path):
    model, tok = tiny_eager
    prompts = [prompt(heldout_ids, tok, LENGTH, offset=3000 + 400 * i) for i in range(N_PROMPTS + N_TEST)]
    train_prompts, test_prompts = prompts[:N_PROMPTS], prompts[N_PROMPTS:]
    with threadpool_limits(1):
        runner = ReferenceRunner(model, SCHEMES, cache_dir=tmp_path / "replays")
        # training sees each scheme as kvfp runs it and as a bf16/sdpa server runs it
        obs_a, y_a = collect(model, train_prompts)
        obs_b, y_b = collect(served, train_prompts, batch_size=N_PROMPTS)
        X = feature_matrix(obs_a + obs_b, runner, TIERS)
        y = np.concatenate([y_a, y_b])
        probe_of = np.array([str(o.prompt_ids) for o in obs_a + obs_b])
        manifest = make_manifest(model, tok, model_id="kvfp-tiny", candidates=SCHEMES)
        trained = TrainedFingerprinter.fit(manifest, X, y, groups=probe_of)
        path = save_fingerprinter(tmp_path / "clf", trained)
        loaded = load_fingerprinter(path, model_id="kvfp-tiny", weights_hash=manifest["weights_hash"],
                                    tokenizer_hash=manifest["tokenizer_hash"])
        test_obs, test_y = collect(served, test_prompts, batch_size=N_TEST)
        assert all(list(o.prompt_ids) != list(p) for o in test_obs for p in train_prompts)
        for tier in TIERS:
            ids = loaded.identify_observations(test_obs, runner, tier)
            got = [i.schemes[0][0] for i in ids]
            assert got == test_y.tolist(), (tier, [(i.schemes[:2], i.unknown) for i in ids])
            for i, t in zip(ids, test_y):
                # an uncompressed bf16 server is not called compressed; the compressed ones are
                assert i.compressed == (t != "none") and i.verdict in (t, "unknown"), (tier, t, i.to_dict())
                assert i.gene["algorithm"] == {"none": "none", "window-32": "eviction"}.get(t, "quantization")
