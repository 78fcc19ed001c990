"""A damaged or altered classifier is refused, never turned into a verdict (issue: hardening).

Each alteration the hardening issue measured (NaN, zero or infinite tensors, an exponent bit
flipped in every coefficient tensor, two labels swapped, wrong shapes, garbage indices) is made to
a saved classifier; loading must refuse it with a message naming the folder. Where the digest is
recomputed after the edit (a forger), the value checks and the trial prediction still hold.
"""

import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from kvfp.errors import KvfpError
from kvfp.fingerprint.persist import ARRAYS_NAME, JSON_NAME, load_fingerprinter, save_fingerprinter
from tests.fingerprint.test_persist import reseal, trained  # noqa: F401  (the fixture)


@pytest.fixture
def saved(trained, tmp_path):  # noqa: F811
    return save_fingerprinter(tmp_path / "clf", trained)


def rewrite_arrays(path, change):
    arrays = load_file(str(path / ARRAYS_NAME))
    change(arrays)
    save_file(arrays, str(path / ARRAYS_NAME))


def float_arrays(arrays):
    return [k for k, a in arrays.items() if a.dtype.kind == "f" and a.size]


def set_all(value):
    def change(arrays):
        for k in float_arrays(arrays):
            arrays[k] = np.full_like(arrays[k], value)
    return change


def flip_exponent_bit(arrays):
    for k in float_arrays(arrays):
        a = arrays[k].copy()
        bits = a.view(np.uint64 if a.dtype == np.float64 else np.uint32)
        bits.flat[0] ^= np.array(1 << (62 if a.dtype == np.float64 else 30), dtype=bits.dtype)
        arrays[k] = a


@pytest.mark.parametrize("change", [set_all(np.nan), set_all(0.0), set_all(np.inf), flip_exponent_bit],
                         ids=["nan", "zero", "inf", "exponent-bit"])
def test_altered_arrays_are_refused(saved, change):
    rewrite_arrays(saved, change)
    with pytest.raises(KvfpError, match="arrays were damaged or altered") as e:
        load_fingerprinter(saved)
    assert e.value.exit_code == 2 and str(saved) in str(e.value)


def test_swapped_labels_are_refused(saved):
    doc = json.loads((saved / JSON_NAME).read_text())
    text = json.dumps(doc)
    swapped = text.replace('"int4-pertoken"', '"@@"').replace('"window-64"', '"int4-pertoken"').replace('"@@"',
                                                                                                      '"window-64"')
    assert swapped != text
    (saved / JSON_NAME).write_text(swapped)
    with pytest.raises(KvfpError, match="fingerprinter.json does not match its recorded digest"):
        load_fingerprinter(saved)


@pytest.mark.parametrize("value, message", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")])
def test_non_finite_values_are_refused_even_with_a_recomputed_digest(saved, value, message):
    rewrite_arrays(saved, set_all(value))
    reseal(saved)
    with pytest.raises(KvfpError, match=message):
        load_fingerprinter(saved)


def test_arrays_that_do_not_fit_together_are_refused_even_with_a_recomputed_digest(saved):
    def reshape(arrays):
        k = max(float_arrays(arrays), key=lambda k: arrays[k].ndim)
        arrays[k] = np.ascontiguousarray(arrays[k][..., :-1]) if arrays[k].shape[-1] > 1 else arrays[k]
    rewrite_arrays(saved, reshape)
    reseal(saved)
    with pytest.raises(KvfpError, match="damaged"):
        load_fingerprinter(saved)


def test_garbage_indices_are_refused_even_with_a_recomputed_digest(saved):
    def garbage(arrays):
        ints = [k for k, a in arrays.items() if a.dtype.kind in "iu" and a.size]
        assert ints, "the classifier stores no integer arrays: pick another alteration"
        for k in ints:
            arrays[k] = np.full_like(arrays[k], np.iinfo(arrays[k].dtype).max // 2)
    rewrite_arrays(saved, garbage)
    reseal(saved)
    with pytest.raises(KvfpError, match="damaged"):
        load_fingerprinter(saved)


def test_a_classifier_saved_before_digests_loads_with_a_note(saved):
    doc = json.loads((saved / JSON_NAME).read_text())
    doc.pop("digest")
    doc["format"] = 1
    (saved / JSON_NAME).write_text(json.dumps(doc))
    back = load_fingerprinter(saved)
    assert any("without an integrity digest" in n for n in back.notes)
    rewrite_arrays(saved, set_all(np.nan))  # and its values are still checked
    with pytest.raises(KvfpError, match="NaN or infinite"):
        load_fingerprinter(saved)


def test_identify_json_never_writes_nan():
    from kvfp.cli.identify import _finite

    out = json.dumps(_finite({"p": float("nan"), "q": [1.0, float("inf")], "r": {"s": -math.inf}}), allow_nan=False)
    assert json.loads(out) == {"p": None, "q": [1.0, None], "r": {"s": None}}


def test_an_unknown_candidate_scheme_names_the_classifier_not_the_grammar(saved):
    doc = json.loads((saved / JSON_NAME).read_text())
    doc["manifest"]["candidates"][1] = "quantum-entangled-kv"
    (saved / JSON_NAME).write_text(json.dumps(doc))
    reseal(saved)
    with pytest.raises(KvfpError, match="candidate scheme 'quantum-entangled-kv', which this kvfp does not know") as e:
        load_fingerprinter(saved)
    assert "grammar" not in str(e.value).lower()
