"""kvfp's own JSONL: ``Trace.to_record()`` per line, optionally with inline ``logits`` (steps ×
vocab floats) and a ``kvfp`` object. Ids are exact; the reader only checks them."""

from __future__ import annotations

import numpy as np

from kvfp.fingerprint.readers.fields import Line, as_ids, as_list, as_logprob, as_str, req
from kvfp.fingerprint.readers.prompt import read_aligned_prompt_logprobs, read_kvfp_block
from kvfp.fingerprint.readers.raw import RawChoice
from kvfp.fingerprint.readers.tokens import Tok, TokenTable
from kvfp.runner.trace import TRACE_FORMAT

NAME = "kvfp-jsonl"
# everything else (mode, scheme, gene, probe, nuisance settings) is metadata, as in Trace.from_record
CORE = {"format", "prompt_ids", "output_ids", "token_logprobs", "topk_ids", "topk_logprobs",
        "prompt_logprobs", "logits", "kvfp"}


def read(rec: dict, line: Line, table: TokenTable) -> list[RawChoice]:
    fmt = req(line, rec, "format", "format")
    if fmt != TRACE_FORMAT:
        raise line.error("format", f"trace format {fmt!r} is not one this kvfp reads ({TRACE_FORMAT})")
    prompt_ids = as_ids(line, req(line, rec, "prompt_ids", "prompt_ids"), "prompt_ids", table.size)
    if not prompt_ids:
        raise line.error("prompt_ids", "is empty")
    output_ids = as_ids(line, req(line, rec, "output_ids", "output_ids"), "output_ids", table.size)
    n = len(output_ids)
    logprobs = [as_logprob(line, v, f"token_logprobs[{t}]")
                for t, v in enumerate(_steps(line, rec, "token_logprobs", n))]
    topk_ids = _steps(line, rec, "topk_ids", n)
    topk_lps = _steps(line, rec, "topk_logprobs", n)
    topk = []
    for t in range(n):
        ids = as_ids(line, topk_ids[t], f"topk_ids[{t}]", table.size)
        lps = as_list(line, topk_lps[t], f"topk_logprobs[{t}]")
        if len(lps) != len(ids):
            raise line.error(f"topk_logprobs[{t}]", f"has {len(lps)} entries but topk_ids[{t}] has {len(ids)}")
        topk.append([(Tok([i], f"id {i}", f"topk_ids[{t}][{j}]"), as_logprob(line, lp, f"topk_logprobs[{t}][{j}]"))
                     for j, (i, lp) in enumerate(zip(ids, lps))])
    probe = rec.get("probe")
    probe_id = probe.get("id") if isinstance(probe, dict) else None
    if probe_id is not None:
        as_str(line, probe_id, "probe.id")
    raw = RawChoice(line=line, source=NAME, chosen=[Tok([i], f"id {i}", f"output_ids[{t}]")
                                                   for t, i in enumerate(output_ids)],
                    chosen_field="output_ids", token_logprobs=logprobs, topk=topk, topk_field="topk_ids[{t}]",
                    kvfp=read_kvfp_block(line, rec, table.size), prompt_ids=prompt_ids,
                    probe_id=probe_id,
                    meta={"line": line.n, **{k: v for k, v in rec.items() if k not in CORE}})
    if rec.get("prompt_logprobs") is not None:
        raw.prompt_logprobs = ("aligned", read_aligned_prompt_logprobs(line, rec["prompt_logprobs"],
                                                                       "prompt_logprobs"), "prompt_logprobs")
    if rec.get("logits") is not None:
        raw.logits = _logits(line, rec["logits"], n, table.size)
    return [raw]


def _steps(line: Line, rec: dict, key: str, n: int) -> list:
    value = as_list(line, req(line, rec, key, key), key)
    if len(value) != n:
        raise line.error(key, f"has {len(value)} entries but output_ids has {n}")
    return value


def _logits(line: Line, value, steps: int, vocab: int) -> np.ndarray:
    """``(steps, vocab)`` float32, finite. A model's logit rows may be wider than its tokenizer
    (embedding tables are padded), never narrower."""
    rows = as_list(line, value, "logits")
    if len(rows) != steps:
        raise line.error("logits", f"has {len(rows)} rows but output_ids has {steps} steps")
    if not steps:
        return np.zeros((0, vocab), dtype=np.float32)
    widths = {len(r) if isinstance(r, list) else -1 for r in rows}
    if -1 in widths or len(widths) > 1:
        raise line.error("logits", "is not a steps × vocab table of numbers (rows of unequal length or not lists)")
    try:
        x = np.asarray(rows, dtype=np.float32).reshape(steps, -1)  # (steps, vocab)
    except (TypeError, ValueError):
        raise line.error("logits", "holds something other than numbers") from None
    if x.shape[1] < vocab:
        raise line.error("logits", f"rows have {x.shape[1]} entries, fewer than the tokenizer's {vocab} ids "
                                   f"(another model's logits?)")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        t, i = bad[0]
        raise line.error(f"logits[{t}][{i}]", f"{x[t, i]} is not a finite number (NaN, Infinity, null or "
                                              f"beyond float32)")
    return x
