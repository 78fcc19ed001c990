"""The scheme contract: a plain dataclass config that names itself, carries its gene and builds
one cache layer per model layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvfp.compressors.gene import Gene
from kvfp.compressors.layer import KvfpLayer, StepState


@dataclass(frozen=True)
class Scheme:
    """Base class. Subclasses are frozen dataclasses whose fields are the scheme's parameters.

    Class attributes describe the name grammar: ``family`` is the name's stem, ``grammar`` the
    pattern shown to users, ``pattern`` a regex whose named groups parse into the fields.
    """

    family: ClassVar[str]
    grammar: ClassVar[str]
    pattern: ClassVar[str]
    summary: ClassVar[str]

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def gene(self) -> Gene:
        raise NotImplementedError

    def make_layer(self, layer_idx: int, num_layers: int, step: StepState) -> KvfpLayer:
        raise NotImplementedError

    @classmethod
    def from_match(cls, groups: dict[str, str]) -> Scheme:
        raise NotImplementedError

    @classmethod
    def canonical(cls) -> list[Scheme]:
        """The catalogue's representatives of this family (default parameters)."""
        return [cls()]
