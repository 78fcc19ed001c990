"""``fp16``: K/V rounded to float16 when cached, compute at the model's own dtype.

llama.cpp's default cache type (``f16``) and the cache of any engine that computes in float32 but
keeps K/V in half precision. llama.cpp writes each K/V into the cache as it is computed and
attention reads it back from there, the prompt included, so the scheme's store sets
``prefill_reads_cache`` (see :mod:`kvfp.compressors.quantization.ggml`): a prompt's tokens attend to
their own rounded K/V too. On a float16 model it changes nothing; on float32 (or bfloat16) models
it is a real rounding, and never the 16-bit no-op of the integer families.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.codecs import Half
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme


@dataclass(frozen=True)
class FP16Cache(StorageScheme):
    """Every K and V value cast to float16 (nearest, ties to even) and decoded back to the model's
    dtype: 2 bytes per value, no scale."""

    family = "fp16"
    grammar = "fp16"
    pattern = r"fp16"
    summary = "K/V rounded to float16 when cached (prefill included), compute at the model's dtype"
    prefill_reads_cache = True

    @property
    def is_noop(self) -> bool:
        return False  # 16 bits here is a float16 rounding, not "keep the model's precision"

    @property
    def name(self) -> str:
        return "fp16"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="quantization", granularity=("tensor",), strategy="static", phase="both",
            params={"bits": 16, "exponent_bits": 5, "mantissa_bits": 10},
        )

    def codecs(self, layer_idx, num_layers, prep):
        return Half(), Half()

    @classmethod
    def from_match(cls, groups):
        return cls()
