"""identify names the candidates a log cannot tell from its verdict."""

from types import SimpleNamespace

import numpy as np

from kvfp.fingerprint.identify import _LookAlikes
from kvfp.fingerprint.reference import Replay


def ref(**cands):
    return SimpleNamespace(candidates={k: Replay(np.asarray(v, dtype=np.float32)) for k, v in cands.items()})


def _indistinguishable(verdict, refs):
    look = _LookAlikes(verdict)
    passed = list(look.watch(iter(refs)))  # the references stream through, unchanged and in order
    assert passed == refs
    return look.result()


def test_only_candidates_equal_on_every_response_are_named():
    a = [[0.0, 1.0, 2.0]]
    refs = [ref(none=a, w512=a, int8=[[0.0, 1.1, 2.0]]),  # w512 evicts nothing on either prompt
            ref(none=a, w512=a, int8=a)]  # int8 happens to match on the second prompt only
    assert _indistinguishable("none", refs) == ["w512"]
    assert _indistinguishable("int8", refs) == []
    assert _indistinguishable("unknown", refs) == []  # a verdict that is no candidate
