"""From collected datasets to a trained fingerprinter: the plain function behind ``kvfp train``.

Every trace of every dataset becomes one labelled observation (label: the scheme that produced
it; group: its probe, so held-out estimates hold out whole probes). Datasets may differ in probe
seed and in serving settings (a ``none`` run in bf16 with sdpa teaches what benign differences
look like) but must share one model and tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvfp.errors import KvfpError
from kvfp.fingerprint.observation import TIERS, Observation, from_trace


def default_candidates(labels) -> list[str]:
    """The candidates simulated by default: every scheme the training data labels (catalogue
    names only, in label order). Each class then has its own replay, which the classifier's
    shared candidate weights read (on the quick protocol, 12 representative candidates for 37
    schemes gave 0.456 logits accuracy, every scheme simulated 0.853; benchmarks/RESULTS.md).
    Every candidate costs one replay per observation."""
    from kvfp.compressors import parse_scheme

    out = []
    for lab in dict.fromkeys(str(v) for v in labels):
        try:
            out.append(parse_scheme(lab).name)
        except KvfpError:
            continue  # a label that is no catalogue scheme cannot be simulated
    return list(dict.fromkeys(out))


@dataclass
class LabelledObservations:
    observations: list[Observation]
    labels: list[str]
    groups: list[str]
    probes: dict = field(default_factory=dict)  # probe id -> Probe, across every dataset
    manifests: list[dict] = field(default_factory=list)

    def tiers(self) -> list[str]:
        """Tiers every observation supports, most informative first."""
        common = set(TIERS)
        for o in self.observations:
            common &= set(o.tiers())
        return [t for t in TIERS if t in common]

    def __len__(self) -> int:
        return len(self.observations)


def load_labelled(paths: Sequence[Path | str]) -> LabelledObservations:
    """Every trace of the datasets at ``paths`` as a labelled observation (checked to share a model)."""
    from kvfp.datasets.dataset import open_dataset

    if not paths:
        raise KvfpError("name at least one --data folder", exit_code=2)
    out = LabelledObservations([], [], [])
    first, weights = None, {}
    for p in paths:
        ds = open_dataset(p)
        m = ds.manifest
        # weights hashes are of the weights as loaded, so a bf16 run of the same model hashes
        # differently: compare them between datasets of one dtype, and model and tokenizer always
        ident = (m["model"]["id"], m["model"]["tokenizer_hash"])
        if first is None:
            first = (p, ident)
        elif ident != first[1]:
            raise KvfpError(f"{p} was collected with another model or tokenizer than {first[0]} "
                            f"({ident[0]} vs {first[1][0]}, or tokenizer hashes differ); use datasets of one model")
        dtype = m["settings"]["dtype"]
        seen = weights.setdefault(dtype, (p, m["model"]["weights_hash"]))
        if seen[1] != m["model"]["weights_hash"]:
            raise KvfpError(f"{p} and {seen[0]} ran {dtype} weights that differ (weights hashes differ); "
                            "train on datasets of one model")
        if not ds.complete:
            raise KvfpError(f"{p} is incomplete ({len(ds.missing())} units missing); finish it with the same "
                            "`kvfp collect` command first", exit_code=2)
        out.manifests.append(m)
        suite_probes = ds.probes.by_id()
        for pid, probe in suite_probes.items():
            known = out.probes.get(pid)
            if known is not None and known.ids != probe.ids:
                raise KvfpError(f"probe id {pid} means different prompts in two datasets; use suites of one generator")
            out.probes[pid] = probe
        for tr in ds.traces():
            o = from_trace(tr)
            out.observations.append(o)
            out.labels.append(str(tr.meta["scheme"]))
            out.groups.append(str(o.probe_id))
    if not out.observations:
        raise KvfpError("the datasets hold no traces", exit_code=2)
    return out


def manifest_identity(data: LabelledObservations) -> dict:
    """Model id and probe-suite hash(es) of the training data, for the classifier's manifest."""
    m = data.manifests[0]
    hashes = sorted({mm["probes"]["suite_hash"] for mm in data.manifests})
    return {"model_id": m["model"]["id"], "probe_suite_hash": ",".join(hashes) or None}


def fit_fingerprinter(data: LabelledObservations, model, tokenizer, *, tiers: Sequence[str] | None = None,
                      candidates: Sequence[str] | None = None, runner=None, engine=None, log=lambda msg: None,
                      progress=None, **params):
    """Features of every observation at every tier, then one :class:`Fingerprinter` per tier.

    Parameters
    ----------
    model, tokenizer : the float32 reference model the data was collected with
    tiers : default: every tier all observations support
    candidates : schemes to simulate (default: :func:`default_candidates` of the labels)
    runner : a ready :class:`~kvfp.fingerprint.reference.ReferenceRunner` (overrides ``candidates``
        and ``engine``)
    engine : an engine profile for the noise yardstick (:mod:`kvfp.runner.engines`); ``None``: bf16/sdpa
    progress : ``progress(done, total)`` as replays are computed (for a runner made here)
    params : passed to :class:`~kvfp.fingerprint.estimators.Fingerprinter`

    Returns
    -------
    (TrainedFingerprinter, {tier: X})
    """
    from kvfp.fingerprint.features.extract import feature_matrix
    from kvfp.fingerprint.persist import TrainedFingerprinter, make_manifest
    from kvfp.fingerprint.reference import ReferenceRunner

    tiers = list(tiers or data.tiers())
    missing = [t for t in tiers if t not in data.tiers()]
    if missing:
        raise KvfpError(f"the training data does not support tier(s) {', '.join(missing)} (it supports "
                        f"{', '.join(data.tiers())}); collect with --logits for the logits tier", exit_code=2)
    if len(set(data.labels)) < 2:
        raise KvfpError(f"training needs at least two schemes; the data holds only {set(data.labels)}", exit_code=2)
    runner = runner or ReferenceRunner(model, list(candidates or default_candidates(data.labels)), engine=engine,
                                       progress=progress)
    log(f"features of {len(data)} observations at {', '.join(tiers)} "
        f"({len(runner.candidates)} candidate schemes replayed per observation)")
    X = feature_matrix(data.observations, runner, tiers, data.probes)
    log(f"fitting the classifier stack at {', '.join(tiers)}")
    ident = manifest_identity(data)
    manifest = make_manifest(model, tokenizer, model_id=ident["model_id"], probe_suite_hash=ident["probe_suite_hash"],
                             candidates=runner.candidates, engine=runner.engine)
    labels = np.asarray(data.labels, dtype=object)
    trained = TrainedFingerprinter.fit(manifest, X, labels, groups=np.asarray(data.groups), **params)
    return trained, X
