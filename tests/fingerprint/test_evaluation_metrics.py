"""The benchmark's metric functions on synthetic numbers with known answers."""

import math

import numpy as np
import pytest

from kvfp.fingerprint.evaluation import metrics
from kvfp.fingerprint.evaluation.figures import candidate_columns, without_candidate
from kvfp.fingerprint.evaluation.report import check, with_targets


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_auroc_of_separated_reversed_and_equal_scores():
    assert metrics.auroc([2, 3, 4], [0, 1, 1.5]) == 1.0
    assert metrics.auroc([0, 1], [2, 3]) == 0.0
    assert metrics.auroc([1, 1], [1, 1, 1]) == 0.5
    # one of the four (pos, neg) pairs is ordered wrongly
    assert metrics.auroc([1, 3], [2, 0]) == pytest.approx(0.75)


@pytest.mark.parametrize("pos,neg", [([], [1.0]), ([1.0], []), ([np.nan], [0.0])])
def test_auroc_refuses_empty_or_non_finite(pos, neg):
    with pytest.raises(ValueError):
        metrics.auroc(pos, neg)


def test_accuracy_macro_f1_and_rate():
    y, p = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    assert metrics.accuracy(y, p) == 0.75
    # F1(a) = 2·1·½/(1½) = ⅔, F1(b) = 2·⅔·1/(1⅔) = 0.8
    assert metrics.macro_f1(y, p) == pytest.approx((2 / 3 + 0.8) / 2)
    # a class only ever predicted (never true) counts with F1 = 0
    assert metrics.macro_f1(["a", "a"], ["a", "c"]) == pytest.approx((2 / 3 + 0) / 2)
    assert metrics.rate([True, False, False, False]) == 0.25 and metrics.rate([]) is None
    with pytest.raises(ValueError):
        metrics.accuracy(["a"], ["a", "b"])


def gaussians(d, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(d / 2, 1, n), rng.normal(-d / 2, 1, n)


@pytest.mark.parametrize("m", [1, 4, 9])
def test_pooled_auroc_matches_the_gaussian_formula(m):
    # sums of m unit-variance scores with means ±d/2 differ by m·d with variance 2m: AUROC = Φ(d·√(m/2))
    pos, neg = gaussians(0.5)
    got = metrics.pooled_auroc(pos, neg, m, n_boot=4000, seed=1)
    assert got == pytest.approx(phi(0.5 * math.sqrt(m / 2)), abs=0.015)


def test_pooled_auroc_is_seeded():
    pos, neg = gaussians(0.3, n=50)
    assert metrics.pooled_auroc(pos, neg, 3, n_boot=300, seed=5) == metrics.pooled_auroc(pos, neg, 3, n_boot=300,
                                                                                           seed=5)


def test_tokens_needed_finds_the_known_pool_size():
    # d = 1: AUROC(m) = Φ(√(m/2)); m = 8 gives 0.977, m = 16 gives 0.998, so with 10 tokens per
    # observation the cheapest point at AUROC ≥ 0.99 is 16 observations = 160 tokens
    pos, neg = gaussians(1.0)
    curve = metrics.auroc_curve({10: (pos, neg, 10.0)}, (1, 2, 4, 8, 16, 32), n_boot=4000, seed=0)
    assert [r["tokens"] for r in curve] == [10, 20, 40, 80, 160, 320]
    got = metrics.tokens_needed(curve, 0.99)
    assert got["reached"] and (got["tokens"], got["m"], got["t"]) == (160, 16, 10) and got["auroc"] >= 0.99


def test_tokens_needed_prefers_the_cheaper_of_two_lengths():
    # 32-token observations with d = 3 reach 0.99 at m = 2 (64 tokens; Φ(3/√2) = 0.983 at m = 1);
    # 1-token observations with d = 1 reach it at m = 16 (16 tokens): the cheaper point wins
    strong, weak = gaussians(3.0), gaussians(1.0, seed=1)
    curve = metrics.auroc_curve({32: (*strong, 32.0), 1: (*weak, 1.0)}, (1, 2, 4, 8, 16, 32), n_boot=4000)
    got = metrics.tokens_needed(curve)
    assert got["reached"] and (got["tokens"], got["t"], got["m"]) == (16, 1, 16)
    assert [r["tokens"] for r in curve] == sorted(r["tokens"] for r in curve)


def test_tokens_needed_reports_the_largest_tried_when_never_reached():
    pos, neg = gaussians(0.05, n=500)
    curve = metrics.auroc_curve({4: (pos, neg, 4.0), 2: (pos, neg, 2.0)}, (1, 2, 4), n_boot=500)
    got = metrics.tokens_needed(curve)
    assert not got["reached"] and got["tokens"] == 16 and (got["t"], got["m"]) == (4, 4)
    assert got["auroc"] == next(r["auroc"] for r in curve if r["tokens"] == 16)


def test_candidate_columns_match_whole_names_only():
    names = ["cand.logits.fit[int4-pertoken]", "cand.logits.fit[h2o-0.1-0.1+int4-pertoken]",
             "cand.logits.corr[int4-pertoken]", "logits.js.mean", "cand.logits.fitmin"]
    assert candidate_columns(names, "int4-pertoken").tolist() == [True, False, True, False, False]


def test_without_candidate_drops_its_columns_and_recomputes_the_best_fit():
    names = ["tokens.flip", "cand.t.fit[a]", "cand.t.fit[b]", "cand.t.fit[c]", "cand.t.llr[b]", "cand.t.fitmin",
             "cand.t.fitgap"]
    X = np.array([[9.0, 3.0, 1.0, 2.0, 7.0, 1.0, 1.0],
                  [8.0, 5.0, 4.0, 0.5, 6.0, 0.5, 3.5]])
    Xb, nb = without_candidate(X, names, "b")
    assert nb == ["tokens.flip", "cand.t.fit[a]", "cand.t.fit[c]", "cand.t.fitmin", "cand.t.fitgap"]
    # row 0: fits a=3, c=2 -> min 2, gap 1; row 1: a=5, c=0.5 -> min 0.5, gap 4.5
    np.testing.assert_array_equal(Xb, [[9.0, 3.0, 2.0, 2.0, 1.0], [8.0, 5.0, 0.5, 0.5, 4.5]])
    assert X[0, 5] == 1.0  # the caller's array is untouched
    # a scheme that is not a candidate changes nothing
    Xz, nz = without_candidate(X, names, "z")
    assert nz == names and np.array_equal(Xz, X)


def test_targets_are_checked_per_tier():
    fig = {"scheme_accuracy": 0.98, "gene_accuracy": 0.9, "macro_f1": 0.9, "open_set_auroc": 0.8,
           "false_alarm_rate": 0.0, "tokens_to_separate": {"reached": True, "tokens": 800}}
    assert check(fig, "scheme_accuracy", "logits") is False and check(fig, "scheme_accuracy", "topk-20") is True
    assert check(fig, "scheme_accuracy", "prompt") is None and check(fig, "gene_accuracy", "tokens") is True
    assert check({**fig, "tokens_to_separate": {"reached": False, "tokens": 4096}}, "tokens_to_separate",
                 "logits") is False
    out = with_targets({"tiers": {"logits": fig}})["targets"]["logits"]
    assert out["scheme_accuracy"] == {"target": ">= 0.99", "met": False} and out["false_alarm_rate"]["met"]


def test_lookalikes_are_candidates_with_the_true_schemes_replay():
    from types import SimpleNamespace

    from kvfp.fingerprint.evaluation import lookalike
    from kvfp.fingerprint.reference import Replay

    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    prompt = np.array([np.nan, -1.0, -2.0], dtype=np.float32)
    same, moved = Replay(base.copy(), prompt.copy()), Replay(base + 1e-3, prompt.copy())
    ref = SimpleNamespace(candidates={"a": Replay(base, prompt), "b": same, "c": moved})

    class Runner:
        def references(self, observations):
            return [ref for _ in observations]

    alike = lookalike.lookalikes([0, 1, 2], ["a", "c", "x"], Runner())
    assert alike == [{"a", "b"}, {"c"}, {"x"}]  # x is no candidate: only itself
    assert lookalike.accuracy(["b", "b", "x"], alike) == pytest.approx(2 / 3)
    # prompt log-probabilities count too: equal logits with another prompt score are not alike
    other_prompt = Replay(base.copy(), prompt + 0.5)
    assert not lookalike.same_replay(ref.candidates["a"], other_prompt)


def test_endpoints_pool_each_served_schemes_observations():
    from kvfp.fingerprint.estimators import Fingerprinter
    from kvfp.fingerprint.evaluation.figures import endpoints

    rng = np.random.default_rng(0)
    names = np.array(["none", "int4-pertoken", "window-64"])
    centers = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.repeat(np.arange(3), 60)
    fp = Fingerprinter().fit(centers[y] + 0.6 * rng.standard_normal((180, 2)), names[y])
    yt = np.repeat(np.arange(3), 15)
    Xt = centers[yt] + 0.6 * rng.standard_normal((45, 2))
    single = np.mean(fp.predict(Xt) == names[yt])
    out = endpoints(fp, Xt, names[yt])
    # one observation is often wrong at this overlap; fifteen pooled are not
    assert single < 0.9 and out["endpoint_accuracy"] == 1.0 and out["endpoints"] == 3
    assert out["endpoint_gene_accuracy"] == 1.0 and out["endpoint_misses"] == []
    # an endpoint that serves window-64 but answers like int4-pertoken is a miss, forgiven as a
    # look-alike only when the two are alike on every one of its probes
    X2 = Xt.copy()
    X2[yt == 2] = centers[1] + 0.6 * rng.standard_normal(((yt == 2).sum(), 2))
    out = endpoints(fp, X2, names[yt])
    assert out["endpoint_misses"] == [["window-64", "int4-pertoken"]]
    assert out["endpoint_accuracy"] == pytest.approx(2 / 3)
    rows = np.flatnonzero(yt == 2)
    every = [{"window-64", "int4-pertoken"} if i in rows else {names[yt[i]]} for i in range(45)]
    some = [{"window-64", "int4-pertoken"} if i in rows[:10] else {names[yt[i]]} for i in range(45)]
    assert endpoints(fp, X2, names[yt], every)["endpoint_accuracy_lookalike"] == 1.0
    assert endpoints(fp, X2, names[yt], some)["endpoint_accuracy_lookalike"] == pytest.approx(2 / 3)
