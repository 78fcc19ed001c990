"""Every estimator of the classifier stack passes scikit-learn's conformance checks."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from kvfp.fingerprint.estimators import Fingerprinter, GeneHeads, OpenSetDetector, SchemeClassifier

ESTIMATORS = [SchemeClassifier(), GeneHeads(), OpenSetDetector(), Fingerprinter()]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # these problems are tiny: on a shared machine BLAS threads only add contention (7x slower)
    with threadpool_limits(1):
        yield


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_conformance(estimator, check):
    check(estimator)
