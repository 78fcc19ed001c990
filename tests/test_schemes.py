import pytest

from kvfp.compressors import Gene, canonical_names, canonical_schemes, parse_scheme
from kvfp.errors import UnknownNameError


@pytest.mark.parametrize("name", ["none", "int8-pertoken", "int4-pertoken", "int2-pertoken", "window-512", "window-1"])
def test_names_round_trip(name):
    assert parse_scheme(name).name == name


def test_canonical_names_parse_to_themselves():
    for s in canonical_schemes():
        assert parse_scheme(s.name) == s
        assert isinstance(s.gene, Gene)
    assert {"none", "int8-pertoken", "window-512"} <= set(canonical_names())


@pytest.mark.parametrize("bad, hint", [
    ("int8-pertokn", "int8-pertoken"),
    ("windw-512", "window-512"),
    ("int9-pertoken", "bits must be in 2..8"),
    ("window-0", "at least 1"),
    ("snapkvv-0.5", "Valid names"),
])
def test_bad_names_explain(bad, hint):
    with pytest.raises(UnknownNameError) as e:
        parse_scheme(bad)
    assert hint in str(e.value)
    assert e.value.exit_code == 2


def test_gene_rejects_unknown_fields():
    with pytest.raises(ValueError):
        Gene(algorithm="magic")
    with pytest.raises(ValueError):
        Gene(algorithm="eviction", importance="vibes")


def test_genes_describe_their_schemes():
    assert parse_scheme("none").gene.algorithm == "none"
    g = parse_scheme("int4-pertoken").gene
    assert (g.algorithm, g.granularity, g.phase, g.params) == ("quantization", ("token",), "decode", {"bits": 4})
    g = parse_scheme("window-256").gene
    assert (g.algorithm, g.importance, g.params) == ("eviction", "recency", {"window": 256})
