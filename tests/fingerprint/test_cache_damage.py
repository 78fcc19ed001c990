"""Caches kvfp reads back (replays, calibration fits) are recomputed when damaged, never trusted and
never a traceback: a cache must not be able to change a verdict."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from kvfp.fingerprint.observation import Observation
from kvfp.fingerprint.reference import ReferenceRunner


@pytest.fixture
def runner(tiny, tmp_path):
    model, _ = tiny
    return ReferenceRunner(model, ["none"], cache_dir=tmp_path / "replays")


def _obs():
    return Observation(prompt_ids=[0, 812, 95, 4051, 33], output_ids=[7, 250, 1999])


@pytest.mark.parametrize("damage", ["garbage", "nan", "no-logits", "wrong-steps"])
def test_a_damaged_replay_entry_is_recomputed(runner, damage):
    obs = _obs()
    good = runner._replays_unique("ref", "none", [obs])[0]
    path = runner._path(runner._key("ref", "none", obs))
    assert path.is_file()
    if damage == "garbage":
        path.write_bytes(b"\x00not safetensors")
    else:
        logits = good.logits.copy()
        tensors = {"logits": logits}
        if damage == "nan":
            logits[1, 3] = np.nan
        elif damage == "no-logits":
            tensors = {"other": logits}
        else:
            tensors = {"logits": logits[:-1].copy()}
        path.unlink()
        save_file(tensors, str(path))
    assert runner._load(runner._key("ref", "none", obs)) is None or damage == "wrong-steps"
    again = runner._replays_unique("ref", "none", [obs])[0]
    np.testing.assert_array_equal(again.logits, good.logits)


def test_a_damaged_calibration_fit_is_recomputed(tmp_path, monkeypatch):
    from kvfp.compressors import calibration

    monkeypatch.setattr(calibration, "cache_dir", lambda: tmp_path)
    calibration._memory.clear()
    calls = []

    def fit(_captured):
        calls.append(1)
        return {"basis": torch.ones(2, 2)}

    monkeypatch.setattr(calibration, "capture_kv", lambda model: [])
    monkeypatch.setattr(calibration, "model_fingerprint", lambda model: "m" * 16)
    first = calibration.cached_fit(None, "x", fit)
    path = next(tmp_path.rglob("*.safetensors"))
    for damage in (b"garbage", None):
        calibration._memory.clear()
        if damage is None:  # reads, but holds NaN
            from safetensors.torch import save_file as save_torch

            save_torch({"basis": torch.full((2, 2), float("nan"))}, str(path))
        else:
            path.write_bytes(damage)
        again = calibration.cached_fit(None, "x", fit)
        assert torch.equal(again["basis"], first["basis"])
    assert len(calls) == 3
    calibration._memory.clear()
