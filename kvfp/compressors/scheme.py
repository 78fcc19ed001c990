"""The scheme contract: a plain dataclass config that names itself, carries its gene and builds
one cache layer per model layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from kvfp.compressors.gene import Gene
from kvfp.compressors.layer import KvfpLayer, StepState


@dataclass(frozen=True)
class Scheme:
    """Base class. Subclasses are frozen dataclasses whose fields are the scheme's parameters.

    Class attributes describe the name grammar: ``family`` is the name's stem, ``grammar`` the
    pattern shown to users, ``pattern`` a regex whose named groups parse into the fields.
    ``role`` says how the scheme composes in a hybrid ``a+b``: ``"eviction"`` schemes accept a
    ``make_store`` for the entries they keep; ``"storage"`` schemes provide one via
    ``make_store``; ``"standalone"`` ones do neither.
    """

    family: ClassVar[str]
    grammar: ClassVar[str]
    pattern: ClassVar[str]
    summary: ClassVar[str]
    role: ClassVar[str] = "standalone"

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def gene(self) -> Gene:
        raise NotImplementedError

    def check_model(self, model) -> None:
        """Raise a KvfpError when this scheme's parameters cannot apply to ``model`` (a rank above
        its head_dim…). Cheap: commands call it before they create any output."""

    def prepare(self, model) -> dict | None:
        """Model-specific data (calibration) computed once per attach; None for most schemes."""
        return None

    def make_layer(self, layer_idx: int, num_layers: int, step: StepState, prep: dict | None = None,
                   make_store: Callable[[], object] | None = None) -> KvfpLayer:
        """Default, for schemes that only decide how entries are kept: one StoredLayer over this
        scheme's own store. Schemes with their own layer (eviction, merging…) override it."""
        from kvfp.compressors.stored import StoredLayer

        return StoredLayer(step, self.make_store(layer_idx, num_layers, prep, step))

    def make_store(self, layer_idx: int, num_layers: int, prep: dict | None = None,
                   step: StepState | None = None) -> Callable[[], object]:
        """For ``role == "storage"``: a factory of this scheme's store for one layer. ``step`` is
        the layer's step state, for stores that need token positions (pre-RoPE projections)."""
        raise NotImplementedError(f"{self.name} cannot be the storage half of a hybrid")

    @classmethod
    def from_match(cls, groups: dict[str, str]) -> Scheme:
        raise NotImplementedError

    @classmethod
    def canonical(cls) -> list[Scheme]:
        """The catalogue's representatives of this family (default parameters)."""
        return [cls()]
