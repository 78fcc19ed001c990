"""Resolve and load causal LMs: the packaged kvfp-tiny, GGUF-packaged models (smollm2-135m), local HF
folders, or hub ids."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from kvfp.errors import KvfpError, UnknownNameError
from kvfp.models.gguf_models import GGUF_MODELS, ensure_converted, status

PACKAGED_DIR = Path(__file__).parent
PACKAGED = {"kvfp-tiny": PACKAGED_DIR / "kvfp-tiny"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE = re.compile(r"cpu|cuda(:\d+)?")
# what transformers raises for a model folder it cannot load: an unreadable or invalid config.json or
# no weights (OSError), an unknown model type (ValueError), a field of the wrong type or fields that
# contradict each other (huggingface_hub's strict config dataclasses)
BROKEN_FOLDER = (OSError, ValueError, TypeError, StrictDataclassError)


@dataclass
class ModelInfo:
    name: str
    source: str  # "packaged" | "gguf-package" | "local" | "hub-cache"
    path: str
    detail: str = ""


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve(name_or_path: str) -> tuple[str, str]:
    """Return ``(what to pass to from_pretrained, source)``; loads no weights, except to convert a
    GGUF-packaged model the first time it is named."""
    if name_or_path in PACKAGED:
        path = PACKAGED[name_or_path]
        if not _is_hf_folder(path):
            raise KvfpError(
                f"the packaged model {name_or_path} is missing from {path}; reinstall kvfp or "
                f"rebuild it with `kvfp models train-tiny --out DIR` and pass DIR"
            )
        return str(path), "packaged"
    if name_or_path in GGUF_MODELS:  # converted into kvfp's cache on first use
        return str(ensure_converted(name_or_path)), "gguf-package"
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not _is_hf_folder(path):
            raise UnknownNameError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path), "local"
    return name_or_path, "hub"


def broken_folder(path: str, e: Exception) -> KvfpError:
    """The error for a model folder that exists but does not load, with transformers' reason on one line."""
    return KvfpError(f"model folder {path} does not load: {' '.join(str(e).split())}")


def check_device(device: str) -> str:
    """``device`` if it names a device kvfp runs on (``cpu``, ``cuda``, ``cuda:N``) that this machine has;
    every command taking ``--device`` calls this before it creates anything."""
    if not DEVICE.fullmatch(device):
        raise KvfpError(f"--device {device!r} is not a device kvfp runs on; choose cpu, cuda or cuda:N", exit_code=2)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KvfpError(f"--device {device!r} requested but no CUDA device is available", exit_code=2)
        n = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= n:
            raise KvfpError(f"--device {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}",
                            exit_code=2)
    return device


def _not_found(name: str, why: str) -> UnknownNameError:
    return UnknownNameError(
        f"model {name!r} not found: it is not a packaged model ({', '.join([*PACKAGED, *GGUF_MODELS])}), not a "
        f"local folder, and {why}.\nPass a packaged name, a folder with config.json and weights, "
        f"or a hub id that is in the local Hugging Face cache (or reachable online)."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint, so an offline machine answers in seconds
    instead of sitting through huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load(name_or_path: str, dtype: str = "float32", device: str = "cpu", attn: str = "sdpa"):
    """Load ``(model, tokenizer)`` in eval mode.

    Hub ids are looked up offline first (the local HF cache); only when absent there and the
    hub is not disabled (``HF_HUB_OFFLINE=1``) is the network tried.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UnknownNameError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if attn not in ("eager", "sdpa"):
        raise UnknownNameError(f"unknown attention implementation {attn!r}; choose eager or sdpa")
    check_device(device)
    target, source = resolve(name_or_path)
    # safetensors only: a folder from a stranger may hold pickled weights, and kvfp runs no code from a file
    kwargs = {"dtype": DTYPES[dtype], "attn_implementation": attn, "use_safetensors": True}
    if source == "hub":
        online = os.environ.get("HF_HUB_OFFLINE") != "1" and _hub_reachable()
        attempts = [True, False] if online else [True]
        last = None
        for offline in attempts:
            try:
                tok = AutoTokenizer.from_pretrained(target, local_files_only=offline)
                model = AutoModelForCausalLM.from_pretrained(target, local_files_only=offline, **kwargs)
                break
            except (OSError, ValueError) as e:
                last = e
        else:
            why = ("the hub could not provide it" if online else
                   "it is not in the local Hugging Face cache (the hub is offline or unreachable)")
            raise _not_found(name_or_path, f"{why} ({type(last).__name__})") from None
    else:
        try:
            tok = AutoTokenizer.from_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(target, **kwargs)
        except BROKEN_FOLDER as e:
            raise broken_folder(target, e) from None
    model.eval().to(device)
    model.kvfp_name = name_or_path  # recorded in traces; an attribute of ours, not HF's
    return model, tok


def packaged_info(name: str) -> dict:
    meta = PACKAGED[name] / "kvfp_tiny.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def available() -> list[ModelInfo]:
    """Packaged models, GGUF-packaged models (installed or not) and causal LMs in the local Hugging Face
    cache."""
    out = []
    for name, path in PACKAGED.items():
        info = packaged_info(name)
        detail = ""
        if info:
            detail = f"{info['parameters'] / 1e6:.1f}M params, held-out loss {info['heldout_loss']:.3f}"
        out.append(ModelInfo(name, "packaged", str(path), detail))
    for name in GGUF_MODELS:
        detail, path = status(name)
        out.append(ModelInfo(name, "gguf-package", path, detail))
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                out.append(ModelInfo(repo.repo_id, "hub-cache", str(repo.repo_path), f"{repo.size_on_disk_str}"))
    except Exception:  # no cache folder yet, or an unreadable one: nothing to list
        pass
    return out
