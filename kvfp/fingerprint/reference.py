"""Reference replays: the observed tokens re-scored by kvfp's own runner.

Features compare an observation with three kinds of replay of *exactly its tokens* (teacher
forcing through the decode path, :func:`kvfp.runner.replay`):

* the **reference** — scheme ``none`` at the reference settings (float32, eager attention);
* the **noise yardstick** — scheme ``none`` in bfloat16 with sdpa attention: how far a benign
  serving difference moves the outputs on these very tokens. Features divide by it, so that an
  uncompressed endpoint served in bf16, with sdpa or batched, lands where ``none`` lands. With an
  engine profile (``--engine llama.cpp``) the yardstick is ``none`` under that engine's emulated
  arithmetic instead;
* the **candidates** — every scheme of a list (default: the canonical catalogue) at the reference
  settings: the "simulate each scheme on the same tokens" half of the fingerprint.

A replay depends only on the model, the settings, the scheme and the ids (prompt and output), never
on what the endpoint returned, so one replay serves every tier. Replays are the expensive part, and
most of their work is shared (:mod:`kvfp.runner.shared`): observations of one prompt length replay
as one batch (no padding, so batching does not change the numbers beyond float rounding), each
distinct prompt is prefilled once per scheme, and schemes that leave the prefill untouched reuse
``none``'s. Before streaming references, the runner fills its disk cache in prompt order, so that
the observations of one probe land in one batch whatever order the caller holds them in. Each
replay is cached as a small safetensors file keyed by model hash, settings, scheme, ids and a hash
of the runner/compressor source (an edited scheme never serves stale replays).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kvfp import runner
from kvfp.compressors import canonical_names, parse_scheme
from kvfp.errors import KvfpError
from kvfp.fingerprint.observation import Observation
from kvfp.paths import cache_root
from kvfp.runner import engines
from kvfp.runner.shared import PrefillStore

REFERENCE_VERSION = 1
REFERENCE = ("none", "float32", "eager")  # scheme, dtype, attention: the reference settings
NOISE = ("none", "bfloat16", "sdpa")  # the benign serving difference features are measured against
_DEFAULT = object()


@dataclass
class Replay:
    """One scheme's replay of one observation's tokens.

    Attributes
    ----------
    logits : ``(steps, vocab)`` float32 raw logits at every generated step
    prompt_logprobs : ``(n_prompt,)`` float32 log-probability of each prompt token at prefill
        (index 0 is NaN: nothing predicts the first token); ``None`` when not computed
    """

    logits: np.ndarray
    prompt_logprobs: np.ndarray | None = None
    _lp: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def logprobs(self) -> np.ndarray:
        """``(steps, vocab)`` float64 log-softmax of :attr:`logits`, computed once (every tier uses it)."""
        if self._lp is None:
            x = self.logits.astype(np.float64)
            m = x.max(-1, keepdims=True)
            self._lp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
        return self._lp


@dataclass
class Reference:
    """Everything the features compare one observation with.

    ``candidates`` keeps the order of the runner's candidate list: feature vectors follow it.
    """

    prompt_ids: list[int]
    output_ids: list[int]
    ref: Replay
    noise: Replay | None = None
    candidates: dict[str, Replay] = field(default_factory=dict)

    def noise_observation(self) -> Observation | None:
        """The noise replay dressed as an observation (every tier), for measuring noise floors."""
        if self.noise is None:
            return None
        plp = None
        if self.noise.prompt_logprobs is not None:
            plp = [None] + [float(x) for x in self.noise.prompt_logprobs[1:]]
        return Observation(prompt_ids=list(self.prompt_ids), output_ids=list(self.output_ids),
                           logits=self.noise.logits, prompt_logprobs=plp, source="kvfp-noise")


def _ids(o: Observation) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(map(int, o.prompt_ids)), tuple(map(int, o.output_ids))


def default_cache_dir() -> Path:
    return cache_root() / "replays"


_code_hash: str | None = None


def _source_hash() -> str:
    """sha256 over the runner, compressor and kernel sources: a replay is only as current as this code."""
    global _code_hash
    if _code_hash is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for sub in ("runner", "compressors", "kernels"):
            for f in sorted((root / sub).rglob("*.py")):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _code_hash = h.hexdigest()[:16]
    return _code_hash


def _dtype_name(model) -> str:
    return str(model.dtype).removeprefix("torch.")


class ReferenceRunner:
    """Replays observations' tokens under the reference, the noise yardstick and each candidate.

    Parameters
    ----------
    model : a model name for :func:`kvfp.models.load` (loaded at the reference settings, float32
        and eager), or a loaded float32 causal LM (used with the attention it was loaded with)
    candidates : scheme names to simulate; ``None`` means the canonical catalogue. ``[]`` computes
        the reference and the noise only
    cache_dir : folder of the on-disk replay cache; the default is ``$KVFP_CACHE/replays``
        (``~/.cache/kvfp/replays``); ``None`` disables caching
    batch_size : rows replayed together (of one prompt length; without sharing, of equal prompt and
        output lengths). A decode step costs about as much for 8 rows as for 32, and wider batches
        copy more in attention (``benchmarks/RESULTS.md``, replay cost)
    noise : also replay the noise yardstick (features need it; tests may switch it off)
    prompt_logprobs : also score the prompt at prefill under every scheme (the ``prompt`` tier)
    share : share prefills between rows and schemes (:mod:`kvfp.runner.shared`); False replays
        through :func:`kvfp.runner.replay` in the caller's order (with ``batch_size=8``, the path
        before sharing, kept for comparison)
    progress : ``progress(done, total)`` called as the cache fills, in replays
    engine : an engine profile (:mod:`kvfp.runner.engines`) that replaces the bf16/sdpa noise
        yardstick: an endpoint served by that engine differs from the float32 reference by the
        engine's own arithmetic, and the profile reproduces how far (not the exact digits: on
        llama.cpp, whose activations are quantized, the last bit of any input re-draws that
        noise, so no emulation short of bit-exact follows it step by step)
    """

    def __init__(self, model, candidates: Sequence[str] | None = None, *, cache_dir=_DEFAULT,
                 batch_size: int = 32, noise: bool = True, prompt_logprobs: bool = True, engine=None,
                 share: bool = True, progress=None):
        if isinstance(model, str):
            from kvfp.models import load

            model, _ = load(model, dtype=REFERENCE[1], attn=REFERENCE[2])
        if model.dtype != torch.float32:
            raise KvfpError(f"the reference model must be float32 (got {_dtype_name(model)}); load it with "
                            "dtype='float32': the reference settings are float32 and eager attention", exit_code=2)
        if batch_size < 1:
            raise KvfpError("batch_size must be at least 1", exit_code=2)
        self.model = model
        names = list(canonical_names() if candidates is None else candidates)
        self.schemes = {}
        for n in names:
            s = parse_scheme(n)  # UnknownNameError (exit code 2) names the grammar
            if s.name in self.schemes:
                raise KvfpError(f"candidate scheme {s.name!r} is listed twice", exit_code=2)
            self.schemes[s.name] = s
        self.candidates = list(self.schemes)
        self.cache_dir = default_cache_dir() if cache_dir is _DEFAULT else (None if cache_dir is None else
                                                                             Path(cache_dir))
        self.batch_size = batch_size
        self.noise = noise
        self.prompt_logprobs = prompt_logprobs
        self.engine = engine
        self.share = share
        self.progress = progress
        self._noise_model = None
        self._model_hash = None
        self._prefills = {"ref": PrefillStore(), "noise": PrefillStore()}

    # -- public -------------------------------------------------------------------------------

    def reference(self, obs: Observation) -> Reference:
        """The :class:`Reference` of one observation."""
        return next(self.references([obs]))

    def references(self, observations: Iterable[Observation], chunk: int = 16) -> Iterator[Reference]:
        """References for many observations, in order, ``chunk`` observations at a time (a chunk's
        replays are held in memory together: about ``(2 + candidates) * steps * vocab * 4`` bytes
        per observation; a reference is released once the caller drops it). With a disk cache and
        sharing, every missing replay is computed first (:meth:`warm`), in the order that shares most."""
        if self.cache_dir is not None and self.share:
            observations = list(observations)
            self.warm(observations)
        buf = []
        for obs in observations:
            buf.append(obs)
            if len(buf) == chunk:
                yield from self._drain(self._chunk(buf))
                buf = []
        if buf:
            yield from self._drain(self._chunk(buf))

    def jobs(self) -> list[tuple[str, str]]:
        """``(which, scheme)`` of every replay one observation needs."""
        out = [("ref", "none")] + ([("noise", "none")] if self.noise else [])
        return out + [("ref", n) for n in self.candidates if n != "none"]

    def missing(self, observations: Sequence[Observation]) -> list[tuple[str, str, Observation]]:
        """The replays the disk cache lacks, one per distinct token sequence."""
        if self.cache_dir is None:
            raise KvfpError("missing() needs a disk cache")
        seen, out = set(), []
        for o in observations:
            ids = _ids(o)
            for which, scheme in self.jobs():
                if (which, scheme, ids) not in seen:
                    seen.add((which, scheme, ids))
                    if not self._path(self._key(which, scheme, o)).is_file():
                        out.append((which, scheme, o))
        return out

    def warm(self, observations: Sequence[Observation]) -> int:
        """Compute every replay of ``observations`` the disk cache lacks; returns how many.

        Observations are taken in prompt order (a probe's observations replay together and share
        their prefill) and each scheme's rows of one prompt length go as batches of ``batch_size``.
        """
        todo = self.missing(observations)
        if not todo:
            return 0
        jobs: dict[tuple[str, str], list[Observation]] = {}
        for which, scheme, o in todo:
            jobs.setdefault((which, scheme), []).append(o)
        by_prompt = sorted({_ids(o)[0] for _, _, o in todo}, key=lambda p: (len(p), p))
        rank = {p: i for i, p in enumerate(by_prompt)}
        done, total = 0, len(todo)
        if self.progress is not None:
            self.progress(0, total)
        # batches are formed prompt by prompt, and every scheme replays a batch before the next is
        # formed, so a prompt's prefill is still in the prefill store when the next scheme wants it
        rows = sorted({(rank[_ids(o)[0]], _ids(o)[1]) for _, _, o in todo})
        for b in range(0, len(rows), self.batch_size):
            part = {(by_prompt[r], out) for r, out in rows[b:b + self.batch_size]}
            for (which, scheme), obs in jobs.items():
                mine = [o for o in obs if _ids(o) in part]
                if mine:
                    self._replays(which, scheme, mine)
                    done += len(mine)
                    if self.progress is not None:
                        self.progress(done, total)
        return total

    @staticmethod
    def _drain(refs: list[Reference]) -> Iterator[Reference]:
        refs.reverse()
        while refs:
            yield refs.pop()

    @property
    def model_hash(self) -> str:
        if self._model_hash is None:
            from kvfp.compressors.calibration import model_fingerprint

            self._model_hash = model_fingerprint(self.model)
        return self._model_hash

    # -- internals ----------------------------------------------------------------------------

    def _chunk(self, obs: list[Observation]) -> list[Reference]:
        for o in obs:
            if not o.prompt_ids or not o.output_ids:
                raise KvfpError(f"observation {o.probe_id or '(no probe id)'} has an empty prompt or output; "
                                "there is nothing to replay")
        ref = self._replays("ref", "none", obs)
        noise = self._replays("noise", "none", obs) if self.noise else [None] * len(obs)
        cands = {}
        for name in self.candidates:
            # ``none`` at the reference settings is the reference itself
            cands[name] = ref if name == "none" else self._replays("ref", name, obs)
        return [Reference(prompt_ids=list(o.prompt_ids), output_ids=list(o.output_ids), ref=ref[i], noise=noise[i],
                          candidates={n: cands[n][i] for n in self.candidates}) for i, o in enumerate(obs)]

    def _noise(self):
        if self._noise_model is None:
            if self.engine is not None:
                self._noise_model = engines.clone(self.model, self.engine)
            else:
                m = copy.deepcopy(self.model).to(getattr(torch, NOISE[1]))
                m.set_attn_implementation(NOISE[2])
                self._noise_model = m
        return self._noise_model

    def _settings(self, which: str) -> tuple[str, str, dict | None]:
        """(dtype, attention, engine) of the reference or the noise run, known without building the latter."""
        if which == "noise" and self.engine is not None:
            return _dtype_name(self.model), self.model.config._attn_implementation, self.engine.describe()
        if which == "noise":
            return NOISE[1], NOISE[2], None
        return _dtype_name(self.model), self.model.config._attn_implementation, None

    def _model_for(self, which: str):
        return self._noise() if which == "noise" else self.model

    def _key(self, which: str, scheme: str, o: Observation) -> str:
        dtype, attn, engine = self._settings(which)
        # the device is named only off the CPU, so that replays cached before devices were keyed still serve
        device = self.model.device.type  # the noise model is built on the reference's device
        blob = json.dumps({"v": REFERENCE_VERSION, "code": _source_hash(), "model": self.model_hash,
                           "dtype": dtype, "attn": attn, "engine": engine, "scheme": scheme,
                           **({"device": device} if device != "cpu" else {}),
                           "prompt_lp": self.prompt_logprobs,
                           "prompt": list(map(int, o.prompt_ids)), "output": list(map(int, o.output_ids))})
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def _path(self, key: str) -> Path:
        return self.cache_dir / self.model_hash / key[:2] / f"{key}.safetensors"

    def _replays(self, which: str, scheme: str, obs: list[Observation]) -> list[Replay]:
        # observations with the same ids share one replay: greedy decoding under benign serving
        # differences often reproduces the very same tokens
        first: dict[tuple, int] = {}
        uniq: list[Observation] = []
        slot = []
        for o in obs:
            ids = _ids(o)
            if ids not in first:
                first[ids] = len(uniq)
                uniq.append(o)
            slot.append(first[ids])
        done = self._replays_unique(which, scheme, uniq)
        return [done[j] for j in slot]

    def _replays_unique(self, which: str, scheme: str, obs: list[Observation]) -> list[Replay]:
        out: list[Replay | None] = [None] * len(obs)
        keys = [self._key(which, scheme, o) for o in obs] if self.cache_dir is not None else None
        todo = []
        for i in range(len(obs)):
            got = self._load(keys[i]) if keys is not None else None
            if got is not None and (got.logits.shape[0] != len(obs[i].output_ids) or (
                    got.prompt_logprobs is not None and len(got.prompt_logprobs) != len(obs[i].prompt_ids))):
                got = None  # an entry of another shape answers another question: recompute it
            if got is None:
                todo.append(i)
            else:
                out[i] = got
        if not todo:
            return out
        s = self.schemes.get(scheme) or parse_scheme(scheme)
        model = self._model_for(which)  # the bf16 copy is only built when something must be replayed
        if self.share:
            self._replay_shared(which, s, model, obs, todo, out, keys)
            return out
        # equal lengths batch without padding, so a replay does not depend on its batch mates
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            groups.setdefault((len(obs[i].prompt_ids), len(obs[i].output_ids)), []).append(i)
        from kvfp.runner import replay

        for idx in groups.values():
            for b in range(0, len(idx), self.batch_size):
                part = idx[b:b + self.batch_size]
                traces = replay(model, s, [list(obs[i].prompt_ids) for i in part],
                                [list(obs[i].output_ids) for i in part], topk=1, logits=True,
                                batch_size=len(part), prompt_logprobs=self.prompt_logprobs)
                for i, tr in zip(part, traces):
                    plp = None
                    if tr.prompt_logprobs is not None:
                        plp = np.array([np.nan if x is None else x for x in tr.prompt_logprobs], dtype=np.float32)
                    out[i] = Replay(logits=np.ascontiguousarray(tr.logits, dtype=np.float32), prompt_logprobs=plp)
                    if keys is not None:
                        self._store(keys[i], out[i])
        return out

    def _replay_shared(self, which, scheme, model, obs, todo, out, keys) -> None:
        # rows of one prompt length, in prompt order: a batch holds as few distinct prompts as it can
        groups: dict[int, list[int]] = {}
        for i in sorted(todo, key=lambda i: tuple(obs[i].prompt_ids)):
            groups.setdefault(len(obs[i].prompt_ids), []).append(i)
        for idx in groups.values():
            for b in range(0, len(idx), self.batch_size):
                part = idx[b:b + self.batch_size]
                got = runner.replay_shared(model, scheme, [list(obs[i].prompt_ids) for i in part],
                                    [list(obs[i].output_ids) for i in part], store=self._prefills[which],
                                    prompt_logprobs=self.prompt_logprobs)
                for i, (logits, plp) in zip(part, got):
                    out[i] = Replay(logits=logits, prompt_logprobs=plp)
                    if keys is not None:
                        self._store(keys[i], out[i])

    def _load(self, key: str) -> Replay | None:
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        try:
            t = load_file(str(path))
        except Exception:  # a damaged cache entry is recomputed, never trusted
            return None
        logits, plp = t.get("logits"), t.get("prompt_logprobs")
        # an entry that reads but holds the wrong thing (another kvfp's layout, values gone bad) is
        # recomputed too: a replay is evidence, and a cache must not be able to change a verdict
        if logits is None or logits.ndim != 2 or logits.dtype.kind != "f" or not np.isfinite(logits).all():
            return None
        if plp is not None and (plp.ndim != 1 or plp.dtype.kind != "f"):
            return None
        return Replay(logits=logits, prompt_logprobs=plp)

    def _store(self, key: str, rep: Replay) -> None:
        from safetensors.numpy import save_file

        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"logits": rep.logits}
        if rep.prompt_logprobs is not None:
            tensors["prompt_logprobs"] = rep.prompt_logprobs
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


__all__ = ["Replay", "Reference", "ReferenceRunner", "REFERENCE", "NOISE", "default_cache_dir"]
