"""Export a dataset's traces in the shapes endpoints return (``docs/log-formats.md``).

Collected traces and real endpoint logs then go through one reader. Every line carries the
``"kvfp"`` object (probe id, prompt ids, suite hash), since an endpoint's response does not contain
its prompt.

- ``kvfp-jsonl``: ``Trace.to_record()`` per line, plus ``logits`` (steps × vocab) when the dataset
  has them and ``prompt_logprobs`` when the traces hold them: everything, ids exact.
- ``openai-completions`` / ``openai-chat``: what those endpoints return for greedy decoding with
  ``logprobs``; token strings are each token decoded alone, chat ``bytes`` the token's exact
  bytes. vLLM's ``prompt_logprobs`` are added only when asked (an endpoint returns them only
  then), holding the prompt token's own entry (no alternatives and no ``rank``: traces keep
  neither).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from kvfp.datasets.atomic import publish_new
from kvfp.datasets.dataset import Dataset
from kvfp.datasets.openai_shapes import chat_content, completions_logprobs, vllm_prompt_logprobs
from kvfp.datasets.tokens import TokenText
from kvfp.errors import KvfpError, UnknownNameError
from kvfp.runner.trace import Trace

FORMATS = ("kvfp-jsonl", "openai-completions", "openai-chat")


def _kvfp_block(trace: Trace, suite_hash: str) -> dict:
    return {"probe_id": (trace.meta.get("probe") or {}).get("id"), "prompt_ids": list(trace.prompt_ids),
            "suite_hash": suite_hash}


def _response_id(prefix: str, trace: Trace, suite_hash: str) -> str:
    # deterministic, so exporting twice gives identical files
    key = f"{suite_hash}/{trace.meta.get('scheme')}/{(trace.meta.get('probe') or {}).get('id')}"
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def kvfp_record(trace: Trace, suite_hash: str) -> dict:
    rec = trace.to_record()
    if trace.logits is not None:
        rec["logits"] = trace.logits.tolist()
    rec["kvfp"] = _kvfp_block(trace, suite_hash)
    return rec


def _vllm_prompt_logprobs(trace: Trace, tt: TokenText) -> list:
    if trace.prompt_logprobs is None:
        raise KvfpError("this dataset's traces hold no prompt logprobs (collected with --no-prompt-logprobs); "
                        "export without --with-prompt-logprobs", exit_code=2)
    return vllm_prompt_logprobs(tt, trace.prompt_ids, trace.prompt_logprobs)


def completions_record(trace: Trace, suite_hash: str, model: str, tt: TokenText, prompt_lp: bool) -> dict:
    lp = completions_logprobs(tt, trace.output_ids, trace.token_logprobs, trace.topk_ids, trace.topk_logprobs)
    choice = {"index": 0, "text": tt.tokenizer.decode(trace.output_ids), "finish_reason": "length", "logprobs": lp}
    if prompt_lp:
        choice["prompt_logprobs"] = _vllm_prompt_logprobs(trace, tt)
    return {"id": _response_id("cmpl", trace, suite_hash), "object": "text_completion", "model": model,
            "choices": [choice], "kvfp": _kvfp_block(trace, suite_hash)}


def chat_record(trace: Trace, suite_hash: str, model: str, tt: TokenText, prompt_lp: bool) -> dict:
    content = chat_content(tt, trace.output_ids, trace.token_logprobs, trace.topk_ids, trace.topk_logprobs)
    rec = {"id": _response_id("chatcmpl", trace, suite_hash), "object": "chat.completion", "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": tt.tokenizer.decode(trace.output_ids)},
                        "finish_reason": "length", "logprobs": {"content": content}}]}
    if prompt_lp:
        rec["prompt_logprobs"] = _vllm_prompt_logprobs(trace, tt)
    rec["kvfp"] = _kvfp_block(trace, suite_hash)
    return rec


def _lines(ds: Dataset, fmt: str, schemes: list[str], tokenizer, prompt_lp: bool) -> Iterable[str]:
    suite_hash = ds.manifest["probes"]["suite_hash"]
    model = ds.manifest["model"]["id"]
    make: Callable[[Trace], dict]
    if fmt == "kvfp-jsonl":
        make = lambda tr: kvfp_record(tr, suite_hash)  # noqa: E731
    else:
        tt = TokenText(tokenizer)
        build = completions_record if fmt == "openai-completions" else chat_record
        make = lambda tr: build(tr, suite_hash, model, tt, prompt_lp)  # noqa: E731
    for s in schemes:
        for tr in ds.traces(s):
            yield json.dumps(make(tr), allow_nan=False) + "\n"


def export_dataset(ds: Dataset, fmt: str, out: Path | str, *, schemes: list[str] | None = None,
                   with_prompt_logprobs: bool = False, tokenizer=None) -> int:
    """Write ``ds``'s traces to ``out`` as one JSON object per line; returns the line count.

    ``tokenizer`` is needed for the OpenAI formats (token strings and bytes). ``out`` is written
    under a temporary name and linked into place; an existing ``out`` is never touched.
    """
    if fmt not in FORMATS:
        raise UnknownNameError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists():
        raise KvfpError(f"{out} already exists; kvfp never overwrites output. Choose another --out.", exit_code=2)
    chosen = schemes or ds.schemes
    for s in chosen:
        if s not in ds.schemes:
            raise KvfpError(f"{ds.path}: no scheme {s!r} in this dataset (it has {', '.join(ds.schemes)})",
                            exit_code=2)
    if fmt != "kvfp-jsonl" and tokenizer is None:
        raise ValueError(f"{fmt} needs the model's tokenizer")
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w") as f:
            for line in _lines(ds, fmt, chosen, tokenizer, with_prompt_logprobs):
                f.write(line)
                count += 1

    if not publish_new(out, write):
        raise KvfpError(f"{out} appeared while exporting; kvfp never overwrites output. Choose another --out.",
                        exit_code=2)
    return count


def dataset_tokenizer(ds: Dataset):
    """Load the tokenizer the dataset was collected with, checking its hash against the manifest."""
    from transformers import AutoTokenizer

    from kvfp.datasets.manifest import tokenizer_hash
    from kvfp.models.loading import resolve

    model = ds.manifest["model"]
    target = model.get("path") if model.get("path") and Path(model["path"]).is_dir() else resolve(model["id"])[0]
    try:
        tok = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as e:
        raise KvfpError(f"cannot load the tokenizer of {model['id']!r} ({target}) to spell tokens: {e}") from None
    if tokenizer_hash(tok) != model["tokenizer_hash"]:
        raise KvfpError(f"the tokenizer at {target} is not the one {ds.path} was collected with (hash differs)")
    return tok
