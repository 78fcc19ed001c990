"""A trace folder: ``manifest.json``, ``traces.jsonl`` and, with full logits,
``logits.safetensors`` (one tensor per trace, keyed by line number; no pickle anywhere).

The folder is assembled under a temporary name beside the target and renamed into place, so a
reader never sees half a folder and an existing folder is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from kvfp.errors import KvfpError
from kvfp.runner.trace import Trace

MANIFEST, TRACES, LOGITS = "manifest.json", "traces.jsonl", "logits.safetensors"


def check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KvfpError(f"{out} already exists and is not empty; kvfp never overwrites output. "
                        f"Choose another --out or remove it yourself.", exit_code=2)


def write_traces(out: Path | str, traces: list[Trace], manifest: dict) -> Path:
    out = Path(out)
    check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        with open(tmp / TRACES, "w") as f:
            for tr in traces:
                f.write(json.dumps(tr.to_record()) + "\n")
        logits = {str(i): tr.logits for i, tr in enumerate(traces) if tr.logits is not None}
        if logits:
            save_file(logits, str(tmp / LOGITS))
        manifest = {**manifest, "n_traces": len(traces), "has_logits": bool(logits)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)
        if out.exists():  # an empty folder the user made: replace it
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_traces(folder: Path | str) -> tuple[dict, list[Trace]]:
    folder = Path(folder)
    mpath, tpath = folder / MANIFEST, folder / TRACES
    if not mpath.is_file() or not tpath.is_file():
        raise KvfpError(f"{folder} is not a kvfp trace folder (needs {MANIFEST} and {TRACES})")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise KvfpError(f"{mpath}: not valid JSON ({e})") from None
    logits = load_file(str(folder / LOGITS)) if (folder / LOGITS).is_file() else {}
    traces = []
    with open(tpath) as f:
        for i, line in enumerate(f):
            try:
                rec = json.loads(line)
                traces.append(Trace.from_record(rec, np.asarray(logits[str(i)]) if str(i) in logits else None))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise KvfpError(f"{tpath}:{i + 1}: malformed trace record ({type(e).__name__}: {e})") from None
    if manifest.get("n_traces") != len(traces):
        raise KvfpError(f"{folder}: manifest lists {manifest.get('n_traces')} traces, file has {len(traces)}")
    return manifest, traces
