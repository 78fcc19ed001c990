"""The probe record and the suite file (``probes.jsonl``): the interface between the probe
generator, ``kvfp collect`` and the fingerprinting features.

A suite file is JSON lines: the first line is a header (``{"kind": "kvfp-probes", …}``), every
further line one probe. The suite's hash covers the probes alone (ids, tokens, planted structure),
so two files with the same probes hash alike whatever their header says.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvfp.errors import KvfpError

SUITE_KIND = "kvfp-probes"
SUITE_FORMAT = 1


@dataclass
class Probe:
    """One prompt built so that some kind of compression shows.

    Attributes
    ----------
    id : unique within its suite, readable (``"needle-1024-d10-s0"``)
    family : ``needle``, ``recall``, ``copy``, ``outlier``, ``distractor``, ``plain``, ``short``…
    seed : the seed this probe was drawn with
    n_tokens : ``len(ids)``, BOS included where the tokenizer adds one
    ids : the prompt's token ids
    spans : the planted structure, by name: ``[start, end)`` token positions in ``ids``
        (e.g. ``{"needle": [100, 112], "question": [1000, 1012]}``; a repeated span has
        ``"copy0"`` and ``"copy1"``)
    answer_ids : the expected continuation where the family has one (the needle's value), else ``[]``
    params : the family's parameters (depth, number of keys, distance…)
    """

    id: str
    family: str
    seed: int
    n_tokens: int
    ids: list[int]
    spans: dict[str, list[int]] = field(default_factory=dict)
    answer_ids: list[int] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_tokens != len(self.ids):
            raise ValueError(f"probe {self.id}: n_tokens {self.n_tokens} != {len(self.ids)} ids")
        for name, span in self.spans.items():
            if len(span) != 2 or not 0 <= span[0] <= span[1] <= self.n_tokens:
                raise ValueError(f"probe {self.id}: span {name} {span} outside [0, {self.n_tokens}]")

    def meta(self) -> dict:
        """Everything but the token ids: what a trace records about the probe it answers."""
        d = asdict(self)
        del d["ids"]
        return d

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict) -> Probe:
        """The probe a JSON record holds; a missing field or one of the wrong type is a ``ValueError``
        naming it (types are checked, not coerced: ``1.5`` is no token id)."""
        if not isinstance(rec, dict):
            raise ValueError(f"expected a JSON object, found {type(rec).__name__}")
        for key in ("id", "family", "seed", "n_tokens", "ids"):
            if key not in rec:
                raise ValueError(f"missing field {key!r}")
        for key in ("id", "family"):
            if not isinstance(rec[key], str):
                raise ValueError(f"{key}: expected a string, found {rec[key]!r:.40}")
        spans, params = rec.get("spans", {}), rec.get("params", {})
        for key, v in (("spans", spans), ("params", params)):
            if not isinstance(v, dict):
                raise ValueError(f"{key}: expected an object, found {type(v).__name__}")
        return cls(id=rec["id"], family=rec["family"], seed=_int(rec["seed"], "seed"),
                   n_tokens=_int(rec["n_tokens"], "n_tokens"), ids=_ints(rec["ids"], "ids"),
                   spans={k: _ints(v, f"spans.{k}") for k, v in spans.items()},
                   answer_ids=_ints(rec.get("answer_ids", []), "answer_ids"), params=dict(params))


def _int(v, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{field}: expected an integer, found {v!r:.40}")
    return v


def _ints(v, field: str) -> list[int]:
    """A list of non-negative integers (token ids, span bounds)."""
    if not isinstance(v, list):
        raise ValueError(f"{field}: expected a list of integers, found {type(v).__name__}")
    out = [_int(x, f"{field}[{i}]") for i, x in enumerate(v)]
    bad = next((i for i, x in enumerate(out) if x < 0), None)
    if bad is not None:
        raise ValueError(f"{field}[{bad}]: {out[bad]} is negative")
    return out


@dataclass
class ProbeSuite:
    """Probes plus a header (suite name, seed, model, tokenizer hash, lengths…)."""

    probes: list[Probe]
    header: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for p in self.probes:
            h.update(json.dumps(p.to_record(), sort_keys=True).encode())
            h.update(b"\n")
        return h.hexdigest()

    def by_id(self) -> dict[str, Probe]:
        return {p.id: p for p in self.probes}

    def __len__(self) -> int:
        return len(self.probes)


def write_suite(path: Path | str, suite: ProbeSuite) -> Path:
    """Write ``suite`` atomically (temporary file, then rename); never overwrites an existing file."""
    path = Path(path)
    if path.exists():
        raise KvfpError(f"{path} already exists; kvfp never overwrites output. Choose another --out.", exit_code=2)
    ids = [p.id for p in suite.probes]
    if len(set(ids)) != len(ids):
        raise ValueError("probe ids must be unique within a suite")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"kind": SUITE_KIND, "format": SUITE_FORMAT, **suite.header, "suite_hash": suite.hash,
              "n_probes": len(suite.probes)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(header) + "\n")
            for p in suite.probes:
                f.write(json.dumps(p.to_record()) + "\n")
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() (a full disk) names no file
            e.filename = str(path)
        raise
    return path


def read_suite(path: Path | str) -> ProbeSuite:
    """Read a suite file; any defect is a :class:`KvfpError` naming the line."""
    path = Path(path)
    if path.is_dir():
        raise KvfpError(f"probe suite {path} is a folder; pass the suite file (probes.jsonl) itself", exit_code=2)
    if not path.is_file():
        raise KvfpError(f"probe suite {path} not found (make one with `kvfp probes generate`)", exit_code=2)
    probes, header = [], None
    with open(path, "rb") as f:  # decoded line by line, so that a binary file is refused naming its line
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise KvfpError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start}); a probe suite is "
                                f"JSON lines") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line, parse_constant=_no_constants)
            except ValueError as e:
                raise KvfpError(f"{path}:{n}: not valid JSON ({e})") from None
            except RecursionError:  # json recurses once per level: a hostile line can exhaust the stack
                raise KvfpError(f"{path}:{n}: JSON nested too deeply (a probe record nests two levels)") from None
            if header is None:
                if not isinstance(rec, dict) or rec.get("kind") != SUITE_KIND:
                    raise KvfpError(f"{path}:{n}: not a kvfp probe suite (first line must be its header)")
                header = rec
                continue
            try:
                probes.append(Probe.from_record(rec))
            except (TypeError, ValueError) as e:
                raise KvfpError(f"{path}:{n}: bad probe record ({e})") from None
    if header is None:
        raise KvfpError(f"{path}: empty file, not a kvfp probe suite")
    suite = ProbeSuite(probes=probes, header={k: v for k, v in header.items() if k not in ("kind", "format")})
    if header.get("suite_hash") not in (None, suite.hash):
        raise KvfpError(f"{path}: the probes do not match the header's suite_hash (edited or truncated file)")
    if len({p.id for p in probes}) != len(probes):
        raise KvfpError(f"{path}: probe ids are not unique")
    return suite


def _no_constants(name: str):
    raise ValueError(f"{name} is not allowed")


__all__ = ["Probe", "ProbeSuite", "read_suite", "write_suite", "SUITE_KIND"]
