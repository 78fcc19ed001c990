"""One shard: the traces of one unit of work (one scheme × a run of consecutive probes) as Parquet.

Columns (one row per probe, in suite order):

==================  ========================  ==============================================
``probe_id``        string
``scheme``          string                    canonical scheme name
``mode``            string                    ``generate`` or ``replay``
``prompt_ids``      list<int32>
``output_ids``      list<int32>
``token_logprobs``  list<float32>             logprob of ``output_ids[t]``
``topk_ids``        list<list<int32>>         steps × k
``topk_logprobs``   list<list<float32>>       steps × k
``prompt_logprobs`` list<float32> or null     per prompt position; element 0 is null
``logits``          list<float32> or null     steps × vocab, row-major (``vocab = len / steps``)
``meta``            string                    JSON: scheme, gene, memory, nuisance, model, probe
==================  ========================  ==============================================

Floats are float32: the runner computes logprobs in float32, so a trace's values survive the
round trip bit for bit; :func:`traces_to_table` refuses values float32 cannot hold exactly
rather than round them silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kvfp.datasets.atomic import publish_new
from kvfp.errors import KvfpError
from kvfp.json_input import parse_json
from kvfp.runner.trace import Trace

SHARD_FORMAT = "1"
_I32, _F32 = pa.int32(), pa.float32()
SCHEMA = pa.schema(
    [
        ("probe_id", pa.string()),
        ("scheme", pa.string()),
        ("mode", pa.string()),
        ("prompt_ids", pa.list_(_I32)),
        ("output_ids", pa.list_(_I32)),
        ("token_logprobs", pa.list_(_F32)),
        ("topk_ids", pa.list_(pa.list_(_I32))),
        ("topk_logprobs", pa.list_(pa.list_(_F32))),
        ("prompt_logprobs", pa.list_(_F32)),
        ("logits", pa.list_(_F32)),
        ("meta", pa.string()),
    ],
    metadata={"kvfp-shard-format": SHARD_FORMAT},
)
COLUMNS = tuple(SCHEMA.names)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _exact_f32(values, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    b = a.astype(np.float32)
    ok = (b.astype(np.float64) == a) | (np.isnan(a) & np.isnan(b))
    if not ok.all():
        raise ValueError(f"{what} holds values float32 cannot store exactly")
    return b


def traces_to_table(traces: list[Trace], probe_ids: list[str], scheme: str) -> pa.Table:
    """An Arrow table of ``traces`` (one per probe of ``probe_ids``, same order)."""
    if len(traces) != len(probe_ids):
        raise ValueError("one trace per probe")
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for pid, tr in zip(probe_ids, traces):
        cols["probe_id"].append(pid)
        cols["scheme"].append(scheme)
        cols["mode"].append(tr.mode)
        cols["prompt_ids"].append(tr.prompt_ids)
        cols["output_ids"].append(tr.output_ids)
        cols["token_logprobs"].append(_exact_f32(tr.token_logprobs, "token_logprobs"))
        cols["topk_ids"].append(tr.topk_ids)
        cols["topk_logprobs"].append([_exact_f32(r, "topk_logprobs") for r in tr.topk_logprobs])
        if tr.prompt_logprobs is None:
            cols["prompt_logprobs"].append(None)
        else:
            _exact_f32([np.nan if x is None else x for x in tr.prompt_logprobs], "prompt_logprobs")
            cols["prompt_logprobs"].append(tr.prompt_logprobs)
        cols["logits"].append(None if tr.logits is None else np.asarray(tr.logits, dtype=np.float32).reshape(-1))
        cols["meta"].append(json.dumps(tr.meta, sort_keys=True))
    return pa.table({c: pa.array(cols[c], type=SCHEMA.field(c).type) for c in COLUMNS}, schema=SCHEMA)


def table_to_traces(table: pa.Table, where: str = "shard") -> list[Trace]:
    """The traces of a shard table (inverse of :func:`traces_to_table`)."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise KvfpError(f"{where}: missing column(s) {', '.join(missing)}")
    plain = table.drop_columns(["logits"]).to_pydict()
    logits = table.column("logits")
    out = []
    for i in range(table.num_rows):
        meta = parse_json(plain["meta"][i], f"{where}: row {i}: meta")
        steps = len(plain["output_ids"][i])
        cell = logits[i]
        lg = None
        if cell.is_valid:
            flat = cell.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            if steps == 0 or flat.size % steps:
                raise KvfpError(f"{where}: row {i}: {flat.size} logits do not divide into {steps} steps")
            lg = flat.reshape(steps, -1)
        out.append(Trace(
            prompt_ids=plain["prompt_ids"][i], output_ids=plain["output_ids"][i],
            token_logprobs=plain["token_logprobs"][i], topk_ids=plain["topk_ids"][i],
            topk_logprobs=plain["topk_logprobs"][i], mode=plain["mode"][i], logits=lg,
            prompt_logprobs=plain["prompt_logprobs"][i], meta=meta,
        ))
    return out


def write_shard(path: Path, traces: list[Trace], probe_ids: list[str], scheme: str) -> bool:
    """Write a shard atomically; ``False`` (and nothing written) when ``path`` already exists."""
    table = traces_to_table(traces, probe_ids, scheme)
    return publish_new(path, lambda tmp: pq.write_table(table, tmp))


def read_shard(path: Path) -> pa.Table:
    """Read a whole shard; an unreadable file is a :class:`KvfpError` naming it."""
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise KvfpError(f"{path}: unreadable Parquet shard ({type(e).__name__}: {e})") from None


def check_shard_schema(path: Path) -> None:
    """Cheap check (the footer only) that ``path`` is a readable shard with kvfp's columns."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise KvfpError(f"{path}: unreadable Parquet shard ({type(e).__name__}: {e})") from None
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise KvfpError(f"{path}: not a kvfp shard (missing column(s) {', '.join(missing)})")
