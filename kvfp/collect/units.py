"""Units of work: one scheme over one shard of the probe suite, run and written as one file.

Units are independent — each reads only the model and its own probes, and publishes its own
shard file atomically — so any process may run any unit, in any order, and a unit whose file
exists is done. Batches never span two shards, so a unit's traces are the same whichever process
runs it (kvfp's runner is deterministic on CPU for a fixed batch composition).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvfp.collect.reference import reference_dir
from kvfp.datasets.dataset import shard_probes
from kvfp.datasets.manifest import SHARDS
from kvfp.datasets.shards import read_shard, shard_name, table_to_traces, write_shard
from kvfp.errors import KvfpError
from kvfp.probes import Probe, ProbeSuite
from kvfp.runner import generate
from kvfp.runner.trace import Trace


@dataclass(frozen=True)
class Unit:
    """``scheme`` over shard ``index``; ``in_dataset=False`` marks a ``none`` unit run only to
    fill the reference cache (the comparison needs it, the user did not ask for it)."""

    scheme: str
    index: int
    in_dataset: bool = True

    @property
    def name(self) -> str:
        stem = shard_name(self.index).removesuffix(".parquet")
        return f"{self.scheme}__{stem}" if self.in_dataset else f"reference__{stem}"


class Plan:
    """The units one process was asked for, and where each one's file goes."""

    def __init__(self, out: Path, manifest: dict, suite: ProbeSuite, schemes: list[str], reference: bool):
        self.out, self.manifest, self.suite = Path(out), manifest, suite
        self.size, self.count = manifest["shards"]["size"], manifest["shards"]["count"]
        self.ref_dir = reference_dir(manifest)
        self.units = [Unit(s, i) for s in schemes for i in range(self.count)]
        if reference and "none" not in schemes:
            self.units += [Unit("none", i, in_dataset=False) for i in range(self.count)]

    def probes(self, index: int) -> list[Probe]:
        return shard_probes(self.suite.probes, self.size, index)

    def dataset_path(self, scheme: str, index: int) -> Path:
        return self.out / SHARDS / scheme / shard_name(index)

    def cache_path(self, index: int) -> Path:
        return self.ref_dir / shard_name(index)

    def target(self, unit: Unit) -> Path:
        return self.dataset_path(unit.scheme, unit.index) if unit.in_dataset else self.cache_path(unit.index)

    def done(self, unit: Unit) -> bool:
        return self.target(unit).is_file()

    def tokens(self, unit: Unit) -> int:
        """Tokens the unit generates."""
        return len(self.probes(unit.index)) * self.manifest["settings"]["new_tokens"]

    def cached_reference(self, index: int) -> list[Trace] | None:
        """The cached ``none`` traces of shard ``index``, if present and of these very probes."""
        path = self.cache_path(index)
        if not path.is_file():
            return None
        probes = self.probes(index)
        try:
            table = read_shard(path)
            traces = table_to_traces(table, str(path))
        except KvfpError:
            return None  # a damaged cache entry is recomputed, not trusted
        if table.column("probe_id").to_pylist() != [p.id for p in probes] or \
                [t.prompt_ids for t in traces] != [p.ids for p in probes]:
            return None
        model_id = self.manifest["model"]["id"]
        for t in traces:  # the cache is keyed by weights, not by the name this run used for them
            t.meta["model"] = model_id
        return traces

    def reference(self, index: int) -> list[Trace] | None:
        """``none`` traces of shard ``index`` from the dataset or the cache, if either has them."""
        path = self.dataset_path("none", index)
        if path.is_file():
            return table_to_traces(read_shard(path), str(path))
        return self.cached_reference(index)


def run_unit(plan: Plan, unit: Unit, model, scheme) -> int:
    """Produce and publish ``unit``'s shard; returns the number of tokens generated (0 when the
    reference cache already held them)."""
    probes = plan.probes(unit.index)
    ids = [p.id for p in probes]
    traces = plan.cached_reference(unit.index) if unit.scheme == "none" else None
    generated = 0
    if traces is None:
        st = plan.manifest["settings"]
        traces = generate(model, scheme, [p.ids for p in probes], st["new_tokens"], topk=st["topk"],
                          logits=st["logits"], batch_size=st["batch_size"], prompt_logprobs=st["prompt_logprobs"])
        for p, tr in zip(probes, traces):
            nuisance = {**tr.meta["nuisance"], "threads": st["threads"]}
            tr.meta = {**tr.meta, "nuisance": nuisance, "model": plan.manifest["model"]["id"], "probe": p.meta()}
        generated = sum(tr.steps for tr in traces)
        if unit.scheme == "none":
            try:
                write_shard(plan.cache_path(unit.index), traces, ids, "none")
            except OSError:
                pass  # an unwritable cache costs a recomputation later, not this run
    if unit.in_dataset:
        write_shard(plan.dataset_path(unit.scheme, unit.index), traces, ids, unit.scheme)
    return generated
