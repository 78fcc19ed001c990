"""What the estimators are for, on synthetic features: calibration, gene heads, open-set rejection."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from kvfp.fingerprint.estimators import Fingerprinter, GeneHeads, OpenSetDetector, SchemeClassifier


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


def blobs(n_per, centers, spread, seed):
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + spread * rng.standard_normal((n_per, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per)
    return X, y


CENTERS = np.array([[0, 0, 0, 0], [2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]], dtype=float)


def test_scheme_classifier_probabilities_are_calibrated_on_new_data():
    # overlapping classes: a good model is unsure, and its confidence should match its accuracy
    X, y = blobs(150, CENTERS, 1.0, seed=0)
    Xt, yt = blobs(400, CENTERS, 1.0, seed=1)
    clf = SchemeClassifier(C=100.0).fit(X, y)
    P = clf.predict_proba(Xt)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-12)
    acc = np.mean(clf.classes_[P.argmax(1)] == yt)
    assert 0.5 < acc < 0.95
    assert abs(P.max(1).mean() - acc) < 0.06
    assert clf.temperature_ > 0 and clf.temperature_ != 1.0


def test_scheme_classifier_separates_distinct_classes_with_string_labels():
    X, y = blobs(40, 4 * CENTERS, 0.3, seed=2)
    names = np.array(["none", "int4-pertoken", "window-64", "fp8-e4m3"])
    clf = SchemeClassifier().fit(X, names[y])
    Xt, yt = blobs(40, 4 * CENTERS, 0.3, seed=3)
    assert np.mean(clf.predict(Xt) == names[yt]) == 1.0


def gene_data(seed, n=240):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    algo = np.where(X[:, 0] > 0.5, "eviction", np.where(X[:, 0] < -0.5, "quantization", "none"))
    comp = np.array(["+".join(s) for s in zip(np.where(X[:, 1] > 0, "zero_point", ""),
                                              np.where(X[:, 2] > 0, "outliers", ""))])
    comp = np.array(["+".join(p for p in c.split("+") if p) for c in comp])
    bits = np.where(algo == "quantization", 3.0 + X[:, 3], np.nan)  # log2 bits only where it applies
    phase = np.full(n, "both")  # one value in training: the head must still answer
    Y = np.stack([algo, comp, bits.astype(object), phase], 1).astype(object)
    return X, Y


def test_gene_heads_predict_each_kind_of_field():
    heads = (("algorithm", "class"), ("compensation", "set"), ("log2_bits", "reg"), ("phase", "class"))
    X, Y = gene_data(0)
    gh = GeneHeads(heads=heads, C=100.0, alpha=0.01).fit(X, Y)
    Xt, Yt = gene_data(1)
    P = gh.predict(Xt)
    assert P.shape == Yt.shape and P.dtype == object
    assert np.mean(P[:, 0] == Yt[:, 0]) > 0.9
    as_set = lambda v: set(filter(None, v.split("+")))  # noqa: E731
    assert np.mean([as_set(a) == as_set(b) for a, b in zip(P[:, 1], Yt[:, 1])]) > 0.9
    truth = np.array(Yt[:, 2], dtype=float)
    est = np.array(P[:, 2], dtype=float)
    applies = np.isfinite(truth)
    assert np.mean(np.isfinite(est) == applies) > 0.9
    both = applies & np.isfinite(est)
    assert np.abs(est[both] - truth[both]).max() < 0.05
    assert set(P[:, 3]) == {"both"}
    d = gh.describe(Xt[:2])
    assert set(d[0]) == {"algorithm", "compensation", "log2_bits", "phase"}
    assert abs(sum(d[0]["algorithm"]["proba"].values()) - 1.0) < 1e-9
    assert d[0]["phase"]["proba"] == {"both": 1.0}


def test_gene_heads_refuse_a_mismatched_target():
    X, Y = gene_data(0, n=20)
    with pytest.raises(ValueError, match="heads"):
        GeneHeads(heads=(("algorithm", "class"),)).fit(X, Y)
    with pytest.raises(ValueError, match="kind"):
        GeneHeads(heads=tuple((f"h{i}", "nope") for i in range(4))).fit(X, Y)


def test_open_set_rejects_far_samples_and_keeps_known_ones():
    X, y = blobs(100, 3 * CENTERS, 0.5, seed=4)
    det = OpenSetDetector(target_false_reject=0.02).fit(X, y)
    Xk, _ = blobs(200, 3 * CENTERS, 0.5, seed=5)
    far = np.array([[-3.0, -3.0, -3.0, 6.0]]) + 0.5 * np.random.default_rng(6).standard_normal((100, 4))
    assert np.mean(det.predict(Xk) == -1) < 0.06
    assert np.mean(det.predict(far) == -1) > 0.95
    np.testing.assert_allclose(det.decision_function(far), det.score_samples(far) - det.offset_)
    assert np.all(det.novelty(far) > det.novelty(Xk).max())


def test_fingerprinter_identifies_with_genes_and_says_unknown():
    names = np.array(["none", "int4-pertoken", "window-64", "h2o-0.1-0.1"])
    X, y = blobs(60, 4 * CENTERS, 0.4, seed=7)
    fp = Fingerprinter(C=10.0).fit(X, names[y])
    assert fp.gene_heads_ is not None and set(fp.genes_) == set(names)
    Xt, yt = blobs(5, 4 * CENTERS, 0.4, seed=8)
    ids = fp.identify(Xt, top=3)
    assert [i.scheme for i in ids] == names[yt].tolist()
    i = ids[0]
    assert len(i.schemes) == 3 and i.schemes[0][1] > 0.9 and not i.unknown
    assert i.gene["algorithm"] == "none"
    q = fp.identify(Xt[yt == 1])[0]
    assert q.gene["algorithm"] == "quantization" and round(q.params["bits"]) == 4
    w = fp.identify(Xt[yt == 2])[0]
    assert w.gene["importance"] == "recency" and "bits" not in w.params
    far = fp.identify(np.array([[-8.0, 8.0, 8.0, 8.0]]))[0]
    assert far.compressed and far.unknown and far.verdict == "unknown" and far.gene is not None
    pooled = fp.identify_pooled(Xt[yt == 1])
    assert pooled.verdict == "int4-pertoken" and pooled.schemes[0][1] > 0.99
    assert pooled.to_dict()["verdict"] == "int4-pertoken"


def test_compressed_needs_evidence_beyond_what_uncompressed_samples_show():
    # "none" and a weak scheme overlap: a sample between them is not enough to call compression
    centers = np.array([[0.0, 0.0], [1.0, 0.0], [6.0, 0.0]])
    names = np.array(["none", "fp8-e4m3", "int2-pertoken"])
    X, y = blobs(80, centers, 0.7, seed=10)
    fp = Fingerprinter(target_false_alarm=0.01).fit(X, names[y])
    assert 0.0 < fp.null_threshold_ < 0.5
    Xn, _ = blobs(300, centers[:1], 0.7, seed=11)
    assert np.mean(fp.is_compressed(Xn)) < 0.05  # about target_false_alarm, with sampling slack
    between = fp.identify(np.array([[0.6, 0.0]]))[0]
    assert between.schemes[0][0] == "fp8-e4m3" and not between.compressed and between.verdict == "none"
    strong = fp.identify(np.array([[6.0, 0.0]]))[0]
    assert strong.compressed and strong.verdict == "int2-pertoken"


def test_groups_hold_out_whole_groups():
    # two groups far apart: held-out groups look novel, so the open-set threshold must be looser
    X, y = blobs(40, 4 * CENTERS, 0.3, seed=12)
    groups = np.tile(np.repeat([0, 1], 20), len(CENTERS))
    X = X + np.where(groups == 1, 1.0, 0.0)[:, None]
    plain = OpenSetDetector().fit(X, y)
    grouped = OpenSetDetector().fit(X, y, groups=groups)
    assert grouped.threshold_ > plain.threshold_
    with pytest.raises(ValueError, match="groups"):
        SchemeClassifier().fit(X, y, groups=groups[:-1])


def test_fingerprinter_without_scheme_names_has_no_gene_heads():
    X, y = blobs(30, 4 * CENTERS, 0.4, seed=9)
    fp = Fingerprinter().fit(X, y)
    assert fp.gene_heads_ is None
    assert fp.identify(X[:1])[0].gene is None


def test_a_known_schemes_gene_is_the_posterior_marginal_an_unknowns_the_heads():
    names = np.array(["none", "int4-pertoken", "int2-pertoken", "window-64"])
    X, y = blobs(60, 2 * CENTERS, 1.0, seed=13)  # overlapping classes: the midpoints are typical
    fp = Fingerprinter(C=10.0).fit(X, names[y])
    # halfway between int4 and int2: the posterior splits between two quantizers
    mid = fp.identify((CENTERS[1] + CENTERS[2])[None])[0]
    assert not mid.unknown and mid.gene_source == "scheme posterior"
    P = dict(fp.identify((CENTERS[1] + CENTERS[2])[None], top=4)[0].schemes)
    assert P["int4-pertoken"] > 0.05 and P["int2-pertoken"] > 0.05
    want = P["int4-pertoken"] + P["int2-pertoken"]
    assert mid.gene_proba["algorithm"]["quantization"] == pytest.approx(want, abs=1e-9)
    assert mid.gene["algorithm"] == "quantization"
    far = fp.identify(np.array([[-12.0, 12.0, 12.0, 12.0]]))[0]
    assert far.unknown and far.gene_source == "gene heads"


def test_parameter_estimates_stay_within_what_training_saw():
    X, Y = gene_data(20)
    heads = GeneHeads(heads=[("algorithm", "class"), ("log2_bits", "reg")]).fit(X, Y[:, [0, 2]])
    far = np.zeros((1, X.shape[1]))
    far[0, 0], far[0, 3] = -5.0, 1e6  # a quantizer, with the bits feature far beyond training
    got = heads.describe(far)[0]["log2_bits"]
    lo, hi = heads.range_["log2_bits"]
    assert got["value"] == hi  # clipped, where the linear head alone says about 1e6
