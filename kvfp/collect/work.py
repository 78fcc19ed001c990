"""The work loop of one process: claim a unit, run it, publish it, release it, until none is left.

Units held by another live process on this host are waited for, so that when this process
returns every unit is done — and if that process dies, its units are taken over here. Units held
from another host cannot be checked and are reported instead of waited for.
"""

from __future__ import annotations

import socket
import time

from kvfp.collect.claims import Claims
from kvfp.collect.progress import UnitProgress
from kvfp.collect.units import Plan, Unit, run_unit


def work(plan: Plan, model, schemes: dict, progress: UnitProgress, poll: float = 0.2) -> tuple[int, list[Unit]]:
    """Run every unit of ``plan`` not done yet. ``schemes`` maps names to scheme objects.

    Returns how many units this process ran, and the units left undone because a process on
    another host holds them.
    """
    claims = Claims(plan.out)
    host = socket.gethostname()
    pending, ran = list(plan.units), 0
    while True:
        waiting, foreign = [], []
        for unit in pending:
            if plan.done(unit):
                continue
            claim = claims.try_claim(unit.name)
            if claim is None:
                holder = claims.holder(unit.name)
                (foreign if holder and holder.get("host") != host else waiting).append(unit)
                continue
            try:
                if plan.done(unit):  # finished by another process between our look and our claim
                    continue
                tokens = run_unit(plan, unit, model, schemes[unit.scheme])
                ran += 1
            finally:
                claim.release()
            progress.set_done(sum(plan.done(u) for u in plan.units), tokens, unit.name)
        pending = [u for u in waiting if not plan.done(u)]
        progress.set_done(sum(plan.done(u) for u in plan.units))
        if not pending:
            claims.sweep()
            return ran, foreign
        time.sleep(poll)
