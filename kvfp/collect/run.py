"""``collect``: run schemes over a probe suite into a dataset folder, resumably."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from kvfp.collect.folder import check_target, prepare_folder
from kvfp.collect.progress import UnitProgress
from kvfp.collect.spec import CollectSpec, expand_schemes
from kvfp.collect.suite import load_suite
from kvfp.collect.summary import summarize
from kvfp.collect.units import Plan
from kvfp.collect.work import work
from kvfp.datasets.dataset import open_dataset
from kvfp.datasets.manifest import build_manifest, tokenizer_hash
from kvfp.errors import KvfpError
from kvfp.runner import engines


def collect(spec: CollectSpec, *, reference: bool = True, summary: bool = True, show_progress: bool = True,
            log=lambda msg: None) -> dict:
    """Run every scheme of ``spec`` over its probe suite and write (or complete) the dataset.

    Everything a user can get wrong (scheme names, model, probes, output folder) is checked
    before any unit runs. Units already in the folder are skipped, so running the same request
    again after an interruption finishes the job; with ``spec.workers > 1`` that many spawned
    processes share the units.

    Parameters
    ----------
    reference : also fill the reference cache with ``none`` traces when ``none`` is not among the
        schemes (the comparison needs them)
    summary : end with the comparison of each scheme against ``none``

    Returns
    -------
    dict
        ``out``, ``units`` (``total``; ``done_before`` this call; ``run_here`` by this process,
        ``None`` with workers; ``left`` undone), ``traces``, ``seconds`` and, with
        ``summary``, per scheme its comparison against ``none`` (see :func:`summarize`).
    """
    from kvfp.compressors.calibration import model_fingerprint
    from kvfp.models import load, resolve

    t0 = time.perf_counter()
    spec = replace(spec, threads=spec.cpu_threads())  # resolved once: it is part of the settings
    schemes = expand_schemes(spec.schemes)
    check_target(spec.out)
    model_path, _ = resolve(spec.model)
    model, tok = load(spec.model, dtype=spec.dtype, device=spec.device, attn=spec.attn)
    vocab = model.get_output_embeddings().weight.shape[0]  # the logits' width, which top-k picks from
    if spec.topk > vocab:  # the traces would hold the whole vocabulary under a manifest saying topk
        raise KvfpError(f"--topk {spec.topk} exceeds {spec.model}'s vocabulary of {vocab} tokens", exit_code=2)
    for s in schemes:  # a parameter the model cannot take (svd-r100000) is refused before the folder exists
        s.check_model(model)
    engines.install(model, engines.for_model(spec.model, spec.engine, flash_attn=spec.flash_attn))
    suite = load_suite(spec.probes, tok, model_name=spec.model, new_tokens=spec.new_tokens,
                       model_max=getattr(model.config, "max_position_embeddings", None))
    requested = build_manifest(model_id=spec.model, model_path=model_path, weights_hash=model_fingerprint(model),
                               tokenizer_hash=tokenizer_hash(tok), suite=suite, schemes=schemes,
                               settings=spec.settings(), shard_size=spec.shard_size)
    manifest = prepare_folder(spec.out, requested, suite)
    names = [s.name for s in schemes]
    plan = Plan(spec.out, manifest, suite, names, reference=reference)
    for path in set_aside_damaged(plan):
        log(f"a shard was unreadable (truncated or damaged): kept aside as {path} and collected again")
    done_before = sum(plan.done(u) for u in plan.units)
    if done_before:
        log(f"{spec.out}: {done_before} of {len(plan.units)} units already done; running the rest")
    with UnitProgress(len(plan.units), done_before, enabled=show_progress) as progress:
        if spec.workers > 1:
            from kvfp.collect.workers import run_workers

            del model  # each worker loads its own
            run_workers(spec, plan, progress, reference)
            ran, foreign = None, [u for u in plan.units if not plan.done(u)]
        else:
            from kvfp.compressors import parse_scheme

            by_name = {"none": parse_scheme("none"), **{s.name: s for s in schemes}}  # none: reference units
            with _torch_threads(spec.threads):
                ran, foreign = work(plan, model, by_name, progress)
    if foreign:
        log(f"{len(foreign)} unit(s) are held by processes on other hosts; run again once they finish")
    ds = open_dataset(spec.out)
    result = {"out": str(spec.out),
              "units": {"total": len(plan.units), "done_before": done_before, "run_here": ran,
                        "left": sum(not plan.done(u) for u in plan.units)},
              "traces": sum(len(plan.probes(u.index)) for u in plan.units if u.in_dataset and plan.done(u)),
              "seconds": time.perf_counter() - t0}
    if summary:
        result["schemes"] = summarize(ds, plan, names)
    return result


def set_aside_damaged(plan: Plan) -> list[Path]:
    """Rename every finished unit whose file no longer reads (its Parquet footer) so that it runs again.

    kvfp publishes shards whole, so such a file was damaged afterwards (a copy cut short, a disk
    fault); it is kept, renamed, rather than deleted: nothing already written is thrown away.
    """
    from kvfp.datasets.shards import check_shard_schema

    moved = []
    for unit in plan.units:
        path = plan.target(unit)
        if not path.is_file():
            continue
        try:
            check_shard_schema(path)
        except KvfpError:
            # outside shards/, which holds shards only
            aside = plan.out / "damaged" / path.relative_to(plan.out).parent / f"{path.name}.{int(time.time())}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)
            moved.append(aside)
    return moved


@contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` torch CPU threads (unchanged when ``None``), restoring the caller's count."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
