"""Mistakes and hostile environments meet a one-line message, never a traceback or a half-written output:
`kvfp collect` and `kvfp serve` here (probe files in test_cli_probes.py; logs, train and export in
test_cli_fingerprint.py, which has a classifier)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.models.loading import PACKAGED

runner = CliRunner()


def assert_refused(r, code: int, *needles: str) -> str:
    """``r`` (a CliRunner result) exited with ``code`` and one ``error: …`` line holding every needle."""
    assert r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # anything else escaped: a crash
    assert "Traceback" not in r.output
    line = next((ln for ln in r.output.splitlines() if ln.startswith("error: ")), None)
    assert line is not None, r.output
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, tiny, heldout_ids):
    from kvfp.probes import write_suite
    from tests.test_datasets import tiny_suite

    _, tok = tiny
    return write_suite(tmp_path_factory.mktemp("suite") / "suite.jsonl", tiny_suite(tok, heldout_ids, lengths=(40,)))


def collect(out, *args, probes=None, model="kvfp-tiny"):
    return runner.invoke(app, ["collect", "--model", model, "-s", "none", "--out", str(out), "--new-tokens", "2",
                               "--topk", "3", *(["--probes", str(probes)] if probes else []), *args])


@pytest.mark.parametrize("device", ["tpu7", "cuda:x", "cpu:0"])
def test_collect_refuses_a_device_string_naming_the_choices(tmp_path, device):
    assert_refused(collect(tmp_path / "d", "--device", device), 2, f"--device '{device}'", "cpu, cuda or cuda:N")
    assert not (tmp_path / "d").exists()


def test_a_cuda_device_this_machine_lacks_is_refused(tmp_path):
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert_refused(collect(tmp_path / "d", "--device", f"cuda:{n}"), 2, f"--device 'cuda:{n}'")
    assert not (tmp_path / "d").exists()


def test_serve_refuses_a_device_string_before_serving():
    r = runner.invoke(app, ["serve", "--model", "kvfp-tiny", "--device", "tpu7", "--port", "1"])
    assert_refused(r, 2, "--device 'tpu7'", "cpu, cuda or cuda:N")


def test_collect_refuses_topk_beyond_the_vocabulary(tmp_path, suite_file):
    r = collect(tmp_path / "d", "--topk", "100000", probes=suite_file)
    assert_refused(r, 2, "--topk 100000", "vocabulary of 8192")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("scheme, needle", [("svd-r100000", "rank exceeds this model's head_dim (32)"),
                                            ("mla-100000", "the latent can have at most")])
def test_a_scheme_the_model_cannot_take_is_refused_before_any_output(tmp_path, suite_file, scheme, needle):
    r = runner.invoke(app, ["collect", "--model", "kvfp-tiny", "--scheme", scheme, "--probes", str(suite_file),
                            "--out", str(tmp_path / "d"), "--new-tokens", "2"])
    assert_refused(r, 2, needle)
    assert not (tmp_path / "d").exists()


def test_serve_refuses_a_scheme_the_model_cannot_take_before_serving():
    r = runner.invoke(app, ["serve", "--model", "kvfp-tiny", "--scheme", "svd-r100000", "--port", "1"])
    assert_refused(r, 2, "svd-r100000: rank exceeds")


def broken_model_folder(tmp_path):
    """kvfp-tiny copied with a wrong-typed config field (``hidden_size`` as a string)."""
    folder = tmp_path / "model"
    shutil.copytree(PACKAGED["kvfp-tiny"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = "64"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def broken_model(tmp_path):
    return broken_model_folder(tmp_path)


def test_collect_names_a_model_folder_whose_config_is_broken(tmp_path, broken_model, suite_file):
    r = collect(tmp_path / "d", probes=suite_file, model=str(broken_model))
    assert_refused(r, 1, f"model folder {broken_model} does not load", "hidden_size", "expected int, got str")
    assert not (tmp_path / "d").exists()


def test_collect_refuses_a_binary_probe_file(tmp_path):
    probes = tmp_path / "probes.bin"
    probes.write_bytes(bytes(range(255, -1, -1)) * 8)  # 0xff first: no UTF-8 text starts so
    assert_refused(collect(tmp_path / "d", probes=probes), 1, f"{probes}:1: not UTF-8 text")
    assert not (tmp_path / "d").exists()


def test_collect_refuses_a_folder_as_probe_file(tmp_path):
    assert_refused(collect(tmp_path / "d", probes=tmp_path), 2, f"probe suite {tmp_path} is a folder")
    assert not (tmp_path / "d").exists()


def test_collect_refuses_probe_ids_outside_the_vocabulary(tmp_path, suite_file):
    lines = suite_file.read_text().splitlines()
    header, probe = json.loads(lines[0]), json.loads(lines[1])
    del header["suite_hash"]  # a hand-made suite: nothing else would notice
    probe["ids"][3] = 50_000
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(header) + "\n" + json.dumps(probe) + "\n")
    assert_refused(collect(tmp_path / "d", probes=bad), 2, "holds token id 50000", "outside kvfp-tiny's 8192 ids")
    assert not (tmp_path / "d").exists()


def test_collect_out_under_a_file_names_it(tmp_path, suite_file):
    (tmp_path / "file").write_text("x")
    r = collect(tmp_path / "file" / "d", probes=suite_file)
    assert_refused(r, 1, f"{tmp_path / 'file'} is a file where a folder is needed")
    assert (tmp_path / "file").read_text() == "x"


def test_collect_out_that_cannot_exist_gives_the_os_reason(tmp_path, suite_file):
    assert_refused(collect("/proc/kvfp-none/d", probes=suite_file), 1, "/proc/kvfp-none", "No such file or directory")


def test_collect_on_a_full_disk_leaves_no_half_made_dataset(tmp_path, suite_file, monkeypatch):
    from kvfp.collect import folder

    def full(path, suite):  # the manifest is written; the suite meets a full disk
        assert (tmp_path / "d" / "manifest.json").is_file()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder, "_write_suite", full)
    r = collect(tmp_path / "d", probes=suite_file)
    assert_refused(r, 1, f"{tmp_path / 'd' / 'probes.jsonl'}: No space left on device")
    assert not (tmp_path / "d").exists()


def test_device_strings_against_a_machine_with_one_gpu(monkeypatch):
    import torch

    from kvfp.errors import KvfpError
    from kvfp.models.loading import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert [check_device(d) for d in ("cpu", "cuda", "cuda:0")] == ["cpu", "cuda", "cuda:0"]
    with pytest.raises(KvfpError, match=r"has 1 CUDA device\(s\), cuda:0 to cuda:0") as e:
        check_device("cuda:1")
    assert e.value.exit_code == 2


def test_a_damaged_shard_is_set_aside_and_collected_again(tmp_path, suite_file):
    out = tmp_path / "d"
    r = collect(out, probes=suite_file)
    assert r.exit_code == 0, r.output
    shard = next((out / "shards").rglob("*.parquet"))
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    r = collect(out, probes=suite_file)
    assert r.exit_code == 0, r.output
    assert "unreadable (truncated or damaged)" in r.output
    aside = list((out / "damaged").rglob(shard.name + ".*"))
    assert len(aside) == 1 and aside[0].read_bytes() == whole[: len(whole) // 2]  # kept, not deleted
    from kvfp.datasets import open_dataset
    from kvfp.probes import read_suite

    assert len(list(open_dataset(out).traces("none"))) == len(read_suite(suite_file).probes)


def test_a_model_folder_with_pickled_weights_only_is_refused(tmp_path, suite_file):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(PACKAGED["kvfp-tiny"], folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    r = collect(tmp_path / "d", probes=suite_file, model=str(folder))
    assert_refused(r, 1, str(folder))
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["train", "identify"])
def test_train_and_identify_refuse_a_device_before_reading_anything(tmp_path, command):
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    args = (["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "clf")] if command == "train" else
            ["identify", str(tmp_path / "nothing.jsonl"), "--model", "kvfp-tiny", "--classifier", str(tmp_path / "c")])
    for device, says in (("tpu7", "cpu, cuda or cuda:N"), (f"cuda:{n}", f"--device 'cuda:{n}'")):
        assert_refused(runner.invoke(app, [*args, "--device", device]), 2, says)
    assert not (tmp_path / "clf").exists()
