"""``--workers W``: W processes on this machine share one output folder.

Each worker is an ordinary collect process (spawned, so it loads its own model and torch state)
that works through the same plan; claims (:mod:`kvfp.collect.claims`) keep them from running a
unit twice. The parent only watches the shard files for the progress bar and waits.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time

from kvfp.collect.progress import UnitProgress
from kvfp.collect.spec import CollectSpec
from kvfp.collect.units import Plan
from kvfp.errors import KvfpError


def _worker(spec: dict, reference: bool) -> None:
    from kvfp.collect.run import collect

    try:
        collect(CollectSpec.from_dict(spec), reference=reference, summary=False, show_progress=False)
    except KvfpError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def run_workers(spec: CollectSpec, plan: Plan, progress: UnitProgress, reference: bool, poll: float = 0.5) -> None:
    """Spawn ``spec.workers`` workers over ``plan`` and wait for all of them."""
    # the folder now holds the suite: workers read it rather than regenerate it; spec.threads
    # arrives resolved (it is part of the run's settings), so every worker uses the same count
    child = {**spec.to_dict(), "workers": 1, "threads": spec.threads, "probes": str(plan.out / "probes.jsonl")}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(child, reference), name=f"kvfp-collect-{i}")
             for i in range(spec.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            progress.set_done(sum(plan.done(u) for u in plan.units))
            time.sleep(poll)
    except BaseException:
        for p in procs:  # ours: do not leave them running on an interrupt
            p.terminate()
        for p in procs:
            p.join()
        raise
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    progress.set_done(sum(plan.done(u) for u in plan.units))
    if failed:
        raise KvfpError(f"worker(s) failed: {', '.join(f'{n} (exit {c})' for n, c in failed)}; every unit they "
                        f"finished is kept, so running the same command again resumes the rest")
