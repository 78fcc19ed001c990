"""Saved classifiers: exact round trip, no code on load, refusal when built for another model."""

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from kvfp.errors import KvfpError
from kvfp.fingerprint.features import FEATURES_VERSION, feature_names
from kvfp.fingerprint.persist import (
    ARRAYS_NAME,
    JSON_NAME,
    TrainedFingerprinter,
    load_fingerprinter,
    load_for_model,
    make_manifest,
    save_fingerprinter,
    tokenizer_hash,
)

CANDS = ["none", "int4-pertoken", "window-64"]
TIERS = ("logits", "tokens")
MANIFEST = {"model_id": "kvfp-tiny", "weights_hash": "a" * 16, "tokenizer_hash": "b" * 64,
            "probe_suite_hash": "c" * 64, "candidates": CANDS, "features_version": FEATURES_VERSION}


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


def synthetic(tier, n_per, seed):
    d = len(feature_names(tier, CANDS))
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((len(CANDS), d))
    X = np.concatenate([c + rng.standard_normal((n_per, d)) for c in centers])
    return X, np.repeat(np.array(CANDS), n_per)


@pytest.fixture(scope="module")
def trained():
    X = {t: synthetic(t, 20, seed=i)[0] for i, t in enumerate(TIERS)}
    y = synthetic("logits", 20, 0)[1]
    return TrainedFingerprinter.fit(MANIFEST, X, y, C=1.0)


def test_round_trip_predicts_identically(trained, tmp_path):
    path = save_fingerprinter(tmp_path / "clf", trained)
    assert sorted(p.name for p in path.iterdir()) == sorted([ARRAYS_NAME, JSON_NAME])
    back = load_fingerprinter(path, model_id="kvfp-tiny", weights_hash="a" * 16, tokenizer_hash="b" * 64,
                              probe_suite_hash="c" * 64)
    assert back.manifest["tiers"] == list(TIERS) and back.candidates == CANDS
    for i, t in enumerate(TIERS):
        X = synthetic(t, 3, seed=10 + i)[0]
        X[0] += 50.0  # far from everything: the open-set verdict must survive the round trip too
        a, b = trained.tiers[t], back.tiers[t]
        assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
        assert np.array_equal(a.predict(X), b.predict(X))
        assert [r.to_dict() for r in a.identify(X)] == [r.to_dict() for r in b.identify(X)]
        assert trained.identify(X, t)[0].unknown
        assert back.feature_names[t] == trained.feature_names[t]


def test_refuses_another_model_or_tokenizer(trained, tmp_path):
    path = save_fingerprinter(tmp_path / "clf", trained)
    with pytest.raises(KvfpError, match="tokenizer hash bbbbbbbbbbbbbbbb.*dddddddddddddddd") as e:
        load_fingerprinter(path, tokenizer_hash="d" * 64)
    assert e.value.exit_code == 2
    with pytest.raises(KvfpError, match="weights hash aaaaaaaaaaaaaaaa"):
        load_fingerprinter(path, model_id="kvfp-tiny", weights_hash="e" * 16)
    with pytest.raises(KvfpError, match="trained for model 'kvfp-tiny', not 'other-model'"):
        load_fingerprinter(path, model_id="other-model")
    with pytest.raises(KvfpError, match="probe suite"):
        load_fingerprinter(path, probe_suite_hash="f" * 64)
    # the same weights loaded from another folder are the same model
    load_fingerprinter(path, model_id="/some/folder/kvfp-tiny", weights_hash="a" * 16)


def test_refuses_other_feature_versions_and_damaged_files(trained, tmp_path):
    path = save_fingerprinter(tmp_path / "clf", trained)
    doc = json.loads((path / JSON_NAME).read_text())
    doc["manifest"]["features_version"] = FEATURES_VERSION + 1
    (path / JSON_NAME).write_text(json.dumps(doc))
    with pytest.raises(KvfpError, match="retrain"):
        load_fingerprinter(path)
    with pytest.raises(KvfpError, match="not a saved kvfp classifier"):
        load_fingerprinter(tmp_path / "nothing-here")


def test_loading_never_imports_what_the_file_names(trained, tmp_path):
    path = save_fingerprinter(tmp_path / "clf", trained)
    doc = json.loads((path / JSON_NAME).read_text())
    doc["estimators"]["logits"]["type"] = "os.system"
    (path / JSON_NAME).write_text(json.dumps(doc))
    with pytest.raises(KvfpError, match="does not match its recorded digest"):
        load_fingerprinter(path)
    reseal(path)  # an editor who recomputes the digest still gets nothing imported
    with pytest.raises(KvfpError, match="unknown estimator type 'os.system'"):
        load_fingerprinter(path)


def reseal(path):
    """Recompute a saved classifier's digest after editing it, as a deliberate forger would."""
    from safetensors.numpy import load_file

    from kvfp.fingerprint.integrity import DIGEST_KEY, make_digest

    doc = json.loads((path / JSON_NAME).read_text())
    doc[DIGEST_KEY] = make_digest(doc, load_file(str(path / ARRAYS_NAME)))
    (path / JSON_NAME).write_text(json.dumps(doc))


def test_never_overwrites(trained, tmp_path):
    save_fingerprinter(tmp_path / "clf", trained)
    with pytest.raises(KvfpError, match="already exists"):
        save_fingerprinter(tmp_path / "clf", trained)


def test_fit_refuses_features_of_another_candidate_list():
    X, y = synthetic("logits", 5, 0)
    with pytest.raises(KvfpError, match="candidate"):
        TrainedFingerprinter.fit({**MANIFEST, "candidates": CANDS[:2]}, {"logits": X}, y)


def test_manifest_identifies_the_model_and_tokenizer(tiny):
    model, tok = tiny
    m = make_manifest(model, tok, model_id="kvfp-tiny", candidates=CANDS)
    from kvfp.compressors.calibration import model_fingerprint

    assert m["weights_hash"] == model_fingerprint(model)
    assert m["tokenizer_hash"] == tokenizer_hash(tok) and len(m["tokenizer_hash"]) == 64
    assert m["features_version"] == FEATURES_VERSION and m["candidates"] == CANDS


def test_load_for_model_checks_the_model_it_is_given(tiny, trained, tmp_path):
    model, tok = tiny
    own = TrainedFingerprinter(manifest=make_manifest(model, tok, model_id="kvfp-tiny", candidates=CANDS),
                               tiers=trained.tiers, feature_names=trained.feature_names)
    path = save_fingerprinter(tmp_path / "own", own)
    assert load_for_model(path, model, tok).candidates == CANDS
    assert load_for_model(path, model, tok).reference_runner(model, cache_dir=None).candidates == CANDS
    # a model with other weights (one weight nudged) is refused, naming the weights
    import copy

    import torch

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1.0
    with pytest.raises(KvfpError, match="weights hash"):
        load_for_model(path, other, tok)
