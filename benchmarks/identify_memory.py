"""Peak memory and time of ``kvfp identify`` against the size of the log: it must not grow with the
number of responses.

A small classifier is trained on kvfp-tiny (quick suite, three schemes, top-20), one scheme's
responses are exported as an OpenAI chat log, and that log is repeated until it reaches each size
asked (``--sizes-mb``). Repeated responses replay from the cache after the first, so what is timed
beyond the first is reading, features and the report; the peak resident memory of each ``kvfp
identify`` process is read with ``wait4``.

    python benchmarks/identify_memory.py [--work runs/identify-memory] [--sizes-mb 0 5 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SCHEMES = ["none", "int4-pertoken", "window-128"]


def kvfp(*args: str) -> None:
    print("$ kvfp " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "kvfp", *args], check=True)


def measure(args: list[str]) -> tuple[float, float, int]:
    """``(seconds, peak RSS in MiB, exit code)`` of one ``kvfp`` process."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "kvfp", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    if p.returncode:
        raise SystemExit(f"kvfp {' '.join(args)} failed ({p.returncode}):\n{err[-2000:]}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/identify-memory"))
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[0, 5, 50],
                    help="log sizes; 0 is the exported log once")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data, clf, base = work / "data", work / "clf", work / "base.jsonl"
    if not (data / "manifest.json").is_file() or not clf.exists():
        cmd = ["collect", "--model", "kvfp-tiny", "--probes", "quick", "--out", str(data), "--new-tokens", "16"]
        for s in SCHEMES:
            cmd += ["-s", s]
        kvfp(*cmd)
    if not clf.exists():
        kvfp("train", "--data", str(data), "--out", str(clf), "--tier", "topk-20", "--candidates", ",".join(SCHEMES))
    if not base.exists():
        kvfp("export", str(data), "--format", "openai-chat", "--scheme", "int4-pertoken", "--out", str(base))
    lines = base.read_text().splitlines(keepends=True)
    one = sum(len(x.encode()) for x in lines)
    print(f"\nbase log: {len(lines)} responses, {one / 2**20:.2f} MiB", flush=True)
    print(f"{'log MiB':>8} {'responses':>10} {'seconds':>8} {'peak RSS MiB':>13}", flush=True)
    for mb in args.sizes_mb:
        reps = max(1, round(mb * 2**20 / one))
        log = work / f"log-{reps}x.jsonl"
        if not log.exists():
            with open(log, "w") as f:
                for _ in range(reps):
                    f.writelines(lines)
        seconds, peak, _ = measure(["identify", str(log), "--model", "kvfp-tiny", "--classifier", str(clf),
                                    "--json"])
        print(f"{log.stat().st_size / 2**20:8.1f} {reps * len(lines):10d} {seconds:8.1f} {peak:13.0f}", flush=True)


if __name__ == "__main__":
    main()
