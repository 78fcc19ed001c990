"""Identify the scheme behind an endpoint log: the plain function behind ``kvfp identify``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvfp.errors import KvfpError
from kvfp.fingerprint.observation import TIERS


@dataclass
class Report:
    """The verdict on a log, with its evidence.

    ``pooled`` combines every observation of the log (one endpoint answering several probes);
    ``per_observation`` are the single-probe identifications, in log order. ``indistinguishable``
    are the candidates whose replays equal the verdict's on every response of the log: the log
    cannot tell them from the verdict, whatever the classifier says.
    """

    log: str
    tier: str
    n_observations: int
    scored_tokens: int
    pooled: dict
    per_observation: list[dict] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    classifier: dict = field(default_factory=dict)
    indistinguishable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def choose_tier(observations, trained_tiers, requested: str = "auto") -> str:
    """``requested`` checked against what the log and the classifier support, or the most
    informative tier both support."""
    supported = [t for t in TIERS if all(t in o.tiers() for o in observations)]
    if requested != "auto":
        if requested not in TIERS:
            raise KvfpError(f"unknown tier {requested!r}; tiers are auto, {', '.join(TIERS)}", exit_code=2)
        if requested not in supported:
            raise KvfpError(f"the log does not support tier {requested} (it supports {', '.join(supported)})",
                            exit_code=2)
        if requested not in trained_tiers:
            raise KvfpError(f"the classifier has no {requested} tier (it has {', '.join(trained_tiers)})", exit_code=2)
        return requested
    for t in supported:
        if t in trained_tiers:
            return t
    raise KvfpError(f"no tier in common: the log supports {', '.join(supported)}, the classifier "
                    f"{', '.join(trained_tiers)}", exit_code=2)


def identify_log(log: Path | str, model_name: str, classifier: Path | str, *, tier: str = "auto",
                 probes: Path | str | None = None, fmt: str = "auto", top: int = 5,
                 log_progress=lambda msg: None, replay_progress=None, device: str = "cpu",
                 runner_options: dict | None = None) -> Report:
    """Read ``log``, replay its tokens with ``model_name`` at the reference settings, and let the
    classifier at ``classifier`` name the scheme.

    ``replay_progress(done, total)`` follows the replays; ``device`` runs them (``cuda``: a GPU);
    ``runner_options`` go to :class:`~kvfp.fingerprint.reference.ReferenceRunner` (benchmarks)."""
    from kvfp.compressors.calibration import model_fingerprint
    from kvfp.fingerprint.evidence import profile
    from kvfp.fingerprint.features.extract import feature_matrix
    from kvfp.fingerprint.persist import check_manifest, load_fingerprinter, tokenizer_hash
    from kvfp.fingerprint.readers import load_observations
    from kvfp.fingerprint.reference import REFERENCE
    from kvfp.models import load
    from kvfp.models.loading import check_device
    from kvfp.probes import read_suite
    from kvfp.probes.model_tokenizer import load_tokenizer

    check_device(device)
    if not Path(classifier).exists():
        raise KvfpError(f"classifier {classifier} not found (train one with `kvfp train`)", exit_code=2)
    # every input is read and checked before the model's weights load (seconds to minutes): a mistake in
    # the log, the suite or the classifier costs the user no wait
    tok, max_positions = load_tokenizer(model_name)
    trained = load_fingerprinter(classifier, tokenizer_hash=tokenizer_hash(tok))
    suite = read_suite(probes) if probes is not None else None
    observations = load_observations(log, tok, fmt=fmt, suite=suite, max_positions=max_positions)
    if not observations:
        raise KvfpError(f"{log} holds no responses")
    notes = list(trained.notes) + [n for o in observations for n in o.notes]
    chosen = choose_tier(observations, list(trained.tiers), tier)
    model, _ = load(model_name, dtype=REFERENCE[1], attn=REFERENCE[2], device=device)
    check_manifest(trained.manifest, str(classifier), weights_hash=model_fingerprint(model))
    by_id = suite.by_id() if suite is not None else {}
    if suite is None:
        notes.append("no --probes suite given: position-to-planted-span profiles are empty, which weakens "
                     "the features the classifier was trained with")
    runner = trained.reference_runner(model, progress=replay_progress, **(runner_options or {}))
    noise = f"the {runner.engine.name} noise yardstick" if runner.engine else "the bf16 noise yardstick"
    log_progress(f"replaying {len(observations)} response(s) under the reference, {noise} and "
                 f"{len(runner.candidates)} candidate schemes")
    X = feature_matrix(observations, runner, [chosen], by_id)[chosen]
    pooled = trained.identify(X, chosen, pooled=True, top=top)
    singles = trained.identify(X, chosen, top=top)
    # one pass over the replays (from the cache just filled), one observation's at a time: holding them all
    # grew memory with the log's length ((2 + candidates) x steps x vocab floats per response)
    look = _LookAlikes(str(pooled.verdict))
    evidence = profile(observations, look.watch(runner.references(observations)), chosen)
    alike = look.result()
    if alike:
        notes.append(f"on these probes {', '.join(alike)} give exactly the outputs of {pooled.verdict}: "
                     "no classifier can tell them apart from this log (longer or other probes can)")
    return Report(
        log=str(log), tier=chosen, n_observations=len(observations),
        scored_tokens=sum(o.steps for o in observations),
        pooled=pooled.to_dict(),
        per_observation=[{"probe_id": o.probe_id, "line": o.meta.get("line"), **i.to_dict()}
                         for o, i in zip(observations, singles)],
        evidence=evidence.to_dict(), notes=notes,
        classifier={"path": str(classifier), "model_id": trained.manifest.get("model_id"),
                    "tiers": list(trained.tiers), "candidates": trained.candidates},
        indistinguishable=alike,
    )


class _LookAlikes:
    """Candidates whose replay equals ``verdict``'s on every reference (none when it is no candidate),
    gathered while the references stream past."""

    def __init__(self, verdict: str):
        self.verdict, self.alike, self.seen = verdict, None, 0

    def watch(self, refs):
        from kvfp.fingerprint.evaluation.lookalike import same_replay

        for r in refs:
            self.seen += 1
            if self.verdict not in r.candidates:
                self.alike = []
            elif self.alike is None:
                self.alike = [c for c in r.candidates if c != self.verdict
                              and same_replay(r.candidates[self.verdict], r.candidates[c])]
            else:
                self.alike = [c for c in self.alike if same_replay(r.candidates[self.verdict], r.candidates[c])]
            yield r

    def result(self) -> list[str]:
        return self.alike or []
