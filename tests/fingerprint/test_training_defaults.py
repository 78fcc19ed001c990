"""What `kvfp train` simulates when no candidates are named."""

from kvfp.fingerprint.evaluation.protocol import parse_candidates
from kvfp.fingerprint.training import default_candidates


def test_default_candidates_are_the_labelled_catalogue_schemes():
    labels = ["none", "int4-pertoken", "none", "vendor-x-endpoint", "window-64"]
    assert default_candidates(labels) == ["none", "int4-pertoken", "window-64"]


def test_evaluate_defaults_to_the_evaluated_schemes():
    assert parse_candidates(None, ["none", "fp8-e4m3"]) == ("none", "fp8-e4m3")
    assert parse_candidates("default") == ("default",)  # resolved once the schemes are known
    assert "kivi-2" in parse_candidates("all") and parse_candidates("none,int8-pertoken") == ("none", "int8-pertoken")
