"""Fixtures shared by the reader tests: kvfp-tiny's tokenizer alone and the sample probe suite."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kvfp.models.loading import PACKAGED
from kvfp.probes import read_suite

SAMPLES = Path(__file__).parent / "samples"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(PACKAGED["kvfp-tiny"])


@pytest.fixture(scope="module")
def suite():
    return read_suite(SAMPLES / "probes.jsonl")
