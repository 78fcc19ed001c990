"""The conditional logit: candidate features share one weight across the classes they simulate."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from kvfp.fingerprint.estimators import ESTIMATOR_TYPES, SchemeClassifier
from kvfp.fingerprint.estimators.conditional import candidate_index
from kvfp.fingerprint.estimators.state import get_state, set_state


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


def simulated(n_per, K, seed, noise_cols=20):
    """Each row's own class has the highest ``gain`` (plus noise); ``noise_cols`` generic junk columns."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per)
    gain = rng.standard_normal((len(y), K))
    gain[np.arange(len(y)), y] += 2.5
    X = np.concatenate([gain, rng.standard_normal((len(y), noise_cols))], axis=1)
    names = [f"cand.logits.gain[s{k}]" for k in range(K)] + [f"logits.junk{j}" for j in range(noise_cols)]
    return X, np.array([f"s{k}" for k in y]), names


def test_candidate_index_maps_each_class_to_its_columns():
    names = ["logits.js", "cand.logits.fit[a]", "cand.logits.fit[b]", "cand.logits.gain[a]", "cand.logits.fitmin",
             "cand.logits.fit[zz]"]
    idx = candidate_index(names, np.array(["a", "b", "c"]))
    # kinds: fit, gain; c is simulated by no column, zz is no class
    np.testing.assert_array_equal(idx, [[1, 3], [2, -1], [-1, -1]])
    assert candidate_index(["x", "y"], np.array(["a", "b"])).shape == (2, 0)


def test_shared_weights_learn_from_few_rows_per_class_where_a_plain_model_cannot():
    X, y, names = simulated(3, 30, seed=0)
    Xt, yt, _ = simulated(20, 30, seed=1)
    plain = SchemeClassifier().fit(X, y)
    shared = SchemeClassifier(feature_names=names).fit(X, y)
    acc_plain, acc_shared = np.mean(plain.predict(Xt) == yt), np.mean(shared.predict(Xt) == yt)
    # the Bayes rule here is argmax gain (0.658 on these rows); per-class weights from 3 rows each
    # still cost a little, but nothing like a plain model's (0.24 measured)
    bayes = np.mean(np.array([f"s{k}" for k in Xt[:, :30].argmax(1)]) == yt)
    assert shared.theta_.shape == (1,) and shared.theta_[0] > 0
    assert acc_shared > bayes - 0.1, (acc_shared, bayes)
    assert acc_shared > acc_plain + 0.25, (acc_shared, acc_plain)


def test_a_class_without_training_rows_is_still_scored_by_its_candidate():
    X, y, names = simulated(4, 6, seed=2)
    # class s5 is in the feature names but has no rows: fit on s0..s4 only
    keep = y != "s5"
    clf = SchemeClassifier(feature_names=names).fit(X[keep], y[keep])
    assert "s5" not in clf.classes_.tolist()  # closed set: labels come from the rows
    Xt, yt, _ = simulated(30, 6, seed=3)
    assert np.mean(clf.predict(Xt[yt != "s5"]) == yt[yt != "s5"]) > 0.8


def test_wrong_number_of_names_is_refused():
    X, y, names = simulated(3, 4, seed=4)
    with pytest.raises(ValueError, match="feature_names"):
        SchemeClassifier(feature_names=names[:-1]).fit(X, y)


def test_saved_and_loaded_shared_weights_predict_the_same():
    X, y, names = simulated(5, 8, seed=5)
    clf = SchemeClassifier(feature_names=names).fit(X, y)
    arrays, meta = get_state(clf)
    back = set_state(meta, arrays, ESTIMATOR_TYPES)
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(back.cand_index_, clf.cand_index_)
