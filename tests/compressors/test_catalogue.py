"""The catalogue as a whole: coverage of SCHEMES.md, names, genes, and that every real setting
leaves a mark on a 2048-token probe."""

import numpy as np
import pytest

from kvfp.compressors import canonical_schemes, parse_scheme
from kvfp.compressors.gene import ALGORITHMS
from kvfp.runner import generate
from tests.conftest import prompt

SCHEMES = canonical_schemes()


def test_at_least_thirty_canonical_schemes_covering_every_algorithm():
    assert len(SCHEMES) >= 30, [s.name for s in SCHEMES]
    assert {s.gene.algorithm for s in SCHEMES} == set(ALGORITHMS)


def test_names_are_unique_and_parse_to_themselves():
    names = [s.name for s in SCHEMES]
    assert len(names) == len(set(names))
    for s in SCHEMES:
        assert parse_scheme(s.name) == s


@pytest.fixture(scope="module")
def long_prompt_reference(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 2044)
    return p, generate(model, parse_scheme("none"), [p], 4, logits=True)[0]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.name != "none"], ids=lambda s: s.name)
def test_every_real_setting_differs_from_none_on_a_2048_token_probe(tiny, long_prompt_reference, scheme):
    model, _ = tiny
    p, ref = long_prompt_reference
    tr = generate(model, scheme, [p], 4, logits=True)[0]
    assert np.isfinite(tr.logits).all()
    assert np.abs(tr.logits - ref.logits).max() > 1e-3
    mem = tr.meta["memory"]
    assert mem["bytes_per_token_layer"] > 0
    if scheme.gene.importance != "query_aware_block":  # Quest keeps everything: it saves reads, not memory
        assert mem["bytes_per_token_layer"] < mem["uncompressed_bytes_per_token_layer"]
