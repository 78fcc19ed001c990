"""What the quantization families share: bit-width checks, the 16-bit no-op, and the base of every
token-local (codec) scheme."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from kvfp.compressors.codecs import TokenCodec
from kvfp.compressors.scheme import Scheme
from kvfp.compressors.stores import CodecStore, ExactStore

NOOP_BITS = 16  # "bits 16": keep K/V at the model's own precision (the no-op setting of every family)


def check_bits(bits: int, lo: int = 2, hi: int = 8) -> None:
    """Raise ValueError unless ``lo <= bits <= hi`` or ``bits == 16`` (the no-op)."""
    if bits != NOOP_BITS and not lo <= bits <= hi:
        raise ValueError(f"bits must be in {lo}..{hi} (or {NOOP_BITS}: keep the model's precision), not {bits}")


def check_positive(value: int, what: str) -> None:
    if value < 1:
        raise ValueError(f"{what} must be at least 1, not {value}")


@dataclass(frozen=True)
class StorageScheme(Scheme):
    """A scheme that provides the store of a hybrid (role ``storage``).

    Token-local subclasses implement ``codecs`` (K and V encoded token by token in a
    :class:`~kvfp.compressors.stores.CodecStore`); others override ``make_store``. ``bits == 16``
    keeps the cache exact. Precision follows
    :class:`~kvfp.compressors.stored.StoredLayer`: prefill attends exactly, the cache is read back
    through the codecs — unless ``prefill_reads_cache`` is set, for engines that write K/V into the
    cache before attention reads them (llama.cpp), prefill included.
    """

    role = "storage"
    prefill_reads_cache: ClassVar[bool] = False

    @property
    def is_noop(self) -> bool:
        return getattr(self, "bits", None) == NOOP_BITS

    def codecs(self, layer_idx: int, num_layers: int, prep: dict | None) -> tuple[TokenCodec, TokenCodec]:
        raise NotImplementedError

    def make_store(self, layer_idx, num_layers, prep=None, step=None):
        if self.is_noop:
            return ExactStore
        return partial(CodecStore, *self.codecs(layer_idx, num_layers, prep),
                       prefill_reads_cache=self.prefill_reads_cache)

