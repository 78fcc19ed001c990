"""Identification carries over to an implementation of a scheme that is not kvfp's.

The classifier is trained on kvfp's own int4-pertoken (float32 scales, round half to even) served
at the reference settings and in bf16. The endpoint under test runs an int4 per-token absmax
quantizer written here: scales rounded to float16, codes rounded half away from zero, and the
dequantized values computed in float16 before the model's dtype. Its outputs differ from kvfp's
own int4 replay, so an identification that keyed on kvfp's exact rounding would miss it.
"""

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from kvfp.compressors import parse_scheme
from kvfp.compressors.codecs import TokenCodec, plain_bytes
from kvfp.compressors.quantization.int_pertoken import IntPerToken
from kvfp.fingerprint.estimators import Fingerprinter
from kvfp.fingerprint.features import feature_matrix, feature_names
from kvfp.fingerprint.observation import from_trace
from kvfp.fingerprint.reference import ReferenceRunner
from kvfp.runner import generate
from tests.conftest import prompt

SCHEMES = ["none", "int8-pertoken", "int4-pertoken", "int2-pertoken", "window-48"]
TIER = "topk-20"
NEW = 8


@dataclass(frozen=True)
class HalfScaleCodec(TokenCodec):
    """Absmax codes with a float16 scale, rounded half away from zero, decoded in float16."""

    bits: int

    def encode(self, x):
        qmax = 2 ** (self.bits - 1) - 1
        scale = (x.abs().amax(-1, keepdim=True).float() / qmax).to(torch.float16).float().clamp_min(1e-6)
        y = x.float() / scale
        codes = torch.clamp(torch.sign(y) * torch.floor(y.abs() + 0.5), -qmax, qmax).to(torch.int8)
        return {"codes": codes, "scale": scale.to(torch.float16)}

    def decode(self, enc, dtype):
        return (enc["codes"].to(torch.float16) * enc["scale"]).to(dtype)

    def nbytes(self, enc):
        return plain_bytes(enc["codes"], enc["scale"])


@dataclass(frozen=True)
class OtherInt4(IntPerToken):
    """The same algorithm and name as kvfp's intB-pertoken, other numerics."""

    bits: int = 4

    def codecs(self, layer_idx, num_layers, prep):
        c = HalfScaleCodec(self.bits)
        return c, c


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def served(tiny_eager):
    model, _ = tiny_eager
    bf16 = copy.deepcopy(model).to(dtype=torch.bfloat16)
    bf16.set_attn_implementation("sdpa")
    return bf16


def _observe(model, scheme, prompts):
    return [from_trace(t) for t in generate(model, scheme, prompts, NEW, logits=True)]


@pytest.fixture(scope="module")
def trained(tiny_eager, served, heldout_ids):
    """A fingerprinter trained on kvfp's own traces only, and its reference runner."""
    model, tok = tiny_eager
    train_prompts = [prompt(heldout_ids, tok, n, offset=9000 + 300 * i) for i, n in enumerate((64, 72, 80, 88, 96))]
    test_prompts = [prompt(heldout_ids, tok, n, offset=14000 + 300 * i) for i, n in enumerate((68, 84, 92))]
    obs, labels = [], []
    for name in SCHEMES:
        for m in (model, served):  # kvfp's own traces, at the reference settings and served in bf16
            got = _observe(m, parse_scheme(name), train_prompts)
            obs += got
            labels += [name] * len(got)
    runner = ReferenceRunner(model, SCHEMES, cache_dir=None)
    X = feature_matrix(obs, runner, [TIER])[TIER]
    groups = [str(o.prompt_ids[:1] + o.prompt_ids[-3:]) for o in obs]
    fp = Fingerprinter(feature_names=feature_names(TIER, SCHEMES)).fit(X, np.array(labels), groups)
    return fp, runner, test_prompts


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 2])
def test_a_foreign_int_pertoken_is_named_by_kvfps_scheme(trained, served, bits):
    fp, runner, test_prompts = trained
    name = f"int{bits}-pertoken"
    foreign = _observe(served, OtherInt4(bits), test_prompts)
    kvfp_own = _observe(served, parse_scheme(name), test_prompts)
    # the foreign implementation really is another numerics: its outputs are not kvfp's
    assert any(not np.allclose(a.logits, b.logits, atol=1e-3) for a, b in zip(foreign, kvfp_own))
    Xf = feature_matrix(foreign, runner, [TIER])[TIER]
    pooled = fp.identify_pooled(Xf)
    assert pooled.verdict == name, pooled.schemes
    assert pooled.gene["algorithm"] == "quantization"
    singles = fp.identify(Xf)
    assert sum(i.schemes[0][0] == name for i in singles) >= 2, [i.schemes[:2] for i in singles]
