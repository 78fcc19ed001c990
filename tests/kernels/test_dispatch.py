"""The dispatcher: which path runs, how a setting forces one, and that the schemes' codecs give the
same codes on both paths."""

import subprocess
import sys

import pytest
import torch

from kvfp.compressors.codecs import FP8, AsymmetricGroups, SymmetricPerToken
from kvfp.errors import KvfpError
from kvfp.kernels import dispatch
from kvfp.kernels.dispatch import backend, use_triton


def test_auto_runs_the_reference_on_cpu(monkeypatch):
    monkeypatch.delenv(dispatch.ENV, raising=False)
    assert dispatch.current() == "auto"
    assert not use_triton(torch.zeros(2))


def test_environment_and_context_manager_force_a_path(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "reference")
    assert not use_triton(torch.zeros(2))
    with backend("triton"):  # the context manager wins over the environment
        assert dispatch.current() == "triton"
        with backend("reference"):
            assert not use_triton(torch.zeros(2))
        assert dispatch.current() == "triton"
    assert dispatch.current() == "reference"


@pytest.mark.triton
def test_forcing_triton_on_cpu_needs_the_interpreter(monkeypatch):
    with backend("triton"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert use_triton(torch.zeros(2))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(KvfpError, match="TRITON_INTERPRET"):
            use_triton(torch.zeros(2))


def test_bad_settings_are_user_errors(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "cuda")
    with pytest.raises(KvfpError, match="KVFP_KERNELS") as e:
        dispatch.current()
    assert e.value.exit_code == 2
    with pytest.raises(KvfpError, match="unknown kernel backend"):
        with backend("fast"):
            pass


def test_importing_kvfp_decorates_no_kernel():
    """Kernel modules are imported on first use only, so a test run can still set TRITON_INTERPRET."""
    code = ("import sys, kvfp, kvfp.compressors, kvfp.runner, kvfp.kernels.dispatch; "
            "print(sorted(m for m in sys.modules if m.startswith('kvfp.kernels') and m.endswith('_triton')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


CODECS = [SymmetricPerToken(8), SymmetricPerToken(4), SymmetricPerToken(2), AsymmetricGroups(4),
          AsymmetricGroups(2, 16), FP8("e4m3", (0.5, 2.0, 1.0)), FP8("e5m2")]


@pytest.mark.triton
@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_codecs_give_the_same_codes_on_both_paths(codec, device):
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 63, 80) * torch.rand(2, 3, 63, 1) * 4).to(device)
    with backend("reference"):
        ref = codec.encode(x)
        ref_dec = codec.decode(ref, torch.float32)
    with backend("triton"):
        enc = codec.encode(x)
        dec = codec.decode(enc, torch.float32)
    assert enc.keys() == ref.keys()
    for name in ref:
        assert enc[name].dtype == ref[name].dtype and torch.equal(enc[name], ref[name]), name
    assert torch.equal(dec, ref_dec)  # dequantization is bit-exact too (no fused multiply-add)
