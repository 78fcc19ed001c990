"""What a collect run is asked to do: model, schemes, probes, output folder and settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from kvfp.errors import KvfpError
from kvfp.models.loading import check_device
from kvfp.runner.engines import check_engine


@dataclass(frozen=True)
class CollectSpec:
    """One ``kvfp collect`` request.

    ``schemes`` are names as the user gave them (``"all"`` expands to the canonical list);
    ``probes`` is a suite file, a suite name (``default``, ``quick``) or ``None`` (``default``).
    Every field but ``workers`` and ``out`` is part of what the traces depend on and is recorded
    in the manifest; ``padding`` is always ``left`` (the runner's batching). ``threads`` counts:
    torch's CPU kernels sum in a different order with another thread count, which moves the last
    bits of the logits (plain ``model.generate`` included), so a dataset is bit-reproducible only
    at the thread count it records.
    """

    model: str
    schemes: tuple[str, ...]
    out: Path
    probes: str | None = None
    new_tokens: int = 32
    topk: int = 20
    logits: bool = False
    prompt_logprobs: bool = True
    dtype: str = "float32"
    attn: str = "sdpa"
    batch_size: int = 1
    device: str = "cpu"
    shard_size: int = 4
    workers: int = 1
    threads: int | None = None  # torch CPU threads per process; None: the cores shared among workers
    engine: str = "transformers"  # or an engine profile whose arithmetic the model does (kvfp.runner.engines)
    flash_attn: bool = False  # the engine profile's flash-attention kernel

    def __post_init__(self):
        for name in ("new_tokens", "topk", "batch_size", "shard_size", "workers", "threads"):
            if name == "threads" and self.threads is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise KvfpError(f"--{name.replace('_', '-')} must be a positive integer", exit_code=2)
        check_engine(self.engine)
        check_device(self.device)
        if self.flash_attn and self.engine == "transformers":
            raise KvfpError("--flash-attn selects an engine profile's kernel; pass --engine too", exit_code=2)
        if not self.schemes:
            raise KvfpError("name at least one --scheme (or --scheme all)", exit_code=2)

    def cpu_threads(self) -> int | None:
        """Torch threads each process runs with on CPU (``None`` on a GPU, where they do not
        change results)."""
        if not self.device.startswith("cpu"):
            return None
        if self.threads is not None:
            return self.threads
        import torch

        return max(1, torch.get_num_threads() // self.workers)

    def settings(self) -> dict:
        """The manifest's ``settings``: everything a trace depends on besides model and probes."""
        return {"new_tokens": self.new_tokens, "topk": self.topk, "logits": self.logits,
                "prompt_logprobs": self.prompt_logprobs, "dtype": self.dtype, "attn": self.attn,
                "batch_size": self.batch_size, "padding": "left", "device": self.device,
                "threads": self.cpu_threads(),
                # only when set, so that datasets collected before engine profiles keep their settings
                **({"engine": self.engine, "flash_attn": self.flash_attn} if self.engine != "transformers" else {})}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["schemes"] = list(self.schemes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CollectSpec:
        return cls(**{**d, "out": Path(d["out"]), "schemes": tuple(d["schemes"])})


def expand_schemes(names: tuple[str, ...] | list[str]) -> list:
    """Parse scheme names (``all`` = every canonical scheme) into schemes, in order, once each."""
    from kvfp.compressors import canonical_names, parse_scheme

    out, seen = [], set()
    for name in names:
        for n in canonical_names() if name.strip().lower() == "all" else [name]:
            s = parse_scheme(n)
            if s.name not in seen:
                seen.add(s.name)
                out.append(s)
    return out
