"""The short comparison a collect run ends with: each scheme against ``none`` on the same probes."""

from __future__ import annotations

import numpy as np

from kvfp.collect.units import Plan
from kvfp.datasets.dataset import Dataset
from kvfp.fingerprint import compare_traces


def summarize(ds: Dataset, plan: Plan, schemes: list[str]) -> dict:
    """Per scheme: token agreement and mean |Δ logit| against ``none`` (top-k support, per-step
    constant removed), and the KV bytes per token per layer it kept, over the traces present."""
    refs = {}
    for i in range(plan.count):
        for p, tr in zip(plan.probes(i), plan.reference(i) or []):
            refs[p.id] = tr
    missing, out = set(ds.missing()), {}
    for name in schemes:
        agree, dlogit, mem, n = [], [], [], 0
        full = None
        for i in range(plan.count):
            if (name, i) in missing:
                continue
            for p, tr in zip(plan.probes(i), ds.read_unit(name, i)):
                n += 1
                mem.append(tr.meta["memory"]["bytes_per_token_layer"])
                full = tr.meta["memory"]["uncompressed_bytes_per_token_layer"]
                if p.id in refs:
                    c = compare_traces(refs[p.id], tr)
                    agree.append(c.token_agreement)
                    dlogit.append(c.mean_abs_logit_diff)
        out[name] = {
            "traces": n,
            "token_agreement": float(np.mean(agree)) if agree else None,
            "mean_abs_logit_diff": float(np.mean(dlogit)) if dlogit else None,
            "bytes_per_token_layer": float(np.mean(mem)) if mem else None,
            "uncompressed_bytes_per_token_layer": full,
        }
    return out
