"""Collect traces of a prompt set under one or more schemes."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
import transformers

import kvfp
from kvfp.compressors import parse_scheme
from kvfp.datasets.traces_dir import check_new_folder, write_traces
from kvfp.fingerprint import compare_traces
from kvfp.models import load, resolve
from kvfp.probes import builtin_prompts
from kvfp.runner import generate


def collect(model_name: str, scheme_names: list[str], out: Path, *, new_tokens: int = 32, topk: int = 20,
            logits: bool = False, dtype: str = "float32", attn: str = "sdpa", batch_size: int = 1,
            device: str = "cpu", log=lambda msg: None) -> dict:
    """Run every scheme over the built-in prompts and write one trace folder.

    Everything a user can get wrong (scheme names, model, output folder) is checked before any
    model runs. Returns a summary: per scheme, its comparison with ``none`` on the same prompts.
    """
    schemes = [parse_scheme(n) for n in scheme_names]
    if len({s.name for s in schemes}) != len(schemes):
        raise kvfp.KvfpError("a scheme is named twice", exit_code=2)
    out = Path(out)
    check_new_folder(out)
    resolve(model_name)
    t0 = time.time()
    model, tok = load(model_name, dtype=dtype, device=device, attn=attn)
    prompts = builtin_prompts(tok)
    ids = [p.ids for p in prompts]

    traces, by_scheme = [], {}
    for scheme in schemes:
        log(f"{scheme.name}: {len(prompts)} prompts × {new_tokens} tokens")
        trs = generate(model, scheme, ids, new_tokens, topk=topk, logits=logits, batch_size=batch_size)
        for p, tr in zip(prompts, trs):
            tr.meta = {"model": model_name, "probe": p.meta(), **tr.meta}
        by_scheme[scheme.name] = trs
        traces += trs
    ref = by_scheme.get("none")
    if ref is None:  # the comparison needs the uncompressed run; it is not written unless asked
        ref = generate(model, parse_scheme("none"), ids, new_tokens, topk=topk, batch_size=batch_size)

    manifest = {
        "kind": "kvfp-traces",
        "model": model_name,
        "model_path": resolve(model_name)[0],
        "schemes": [{"name": s.name, "gene": s.gene.to_dict()} for s in schemes],
        "prompts": [p.meta() for p in prompts],
        "settings": {"new_tokens": new_tokens, "topk": topk, "logits": logits, "dtype": dtype,
                     "attn": attn, "batch_size": batch_size, "device": device},
        "versions": {"kvfp": kvfp.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }
    write_traces(out, traces, manifest)
    summary = {}
    for name, trs in by_scheme.items():
        comps = [compare_traces(r, o) for r, o in zip(ref, trs)]
        summary[name] = {
            "token_agreement": sum(c.token_agreement for c in comps) / len(comps),
            "mean_abs_logit_diff": sum(c.mean_abs_logit_diff for c in comps) / len(comps),
            "bytes_per_token_layer": trs[-1].meta["memory"]["bytes_per_token_layer"],
            "uncompressed_bytes_per_token_layer": trs[-1].meta["memory"]["uncompressed_bytes_per_token_layer"],
        }
    return {"out": str(out), "traces": len(traces), "seconds": time.time() - t0, "schemes": summary}
