"""``ggml-TYPE`` and ``ggml-k-TYPE-v-TYPE``: llama.cpp's KV-cache types, bit for bit.

llama.cpp sets the cache type of K and V separately (``--cache-type-k``/``-ctk``,
``--cache-type-v``/``-ctv``, default ``f16``); Ollama (``OLLAMA_KV_CACHE_TYPE``) and LM Studio
expose the same types. Besides f16 the cache holds ggml block formats: ``q8_0``, ``q4_0``,
``q4_1``, ``q5_0``, ``q5_1``, ``iq4_nl`` — blocks of 32 values along head_dim with an fp16 scale
(``_1`` types: an fp16 minimum too; ``iq4_nl``: a fixed 16-level non-linear codebook). The formats
and their quantizers are :mod:`kvfp.kernels.ggml_quants`.

What the engine does (llama.cpp's mainline source, ``llama-kv-cache``, ggml-cpu ``ops.cpp``):

* Every layer's K (after RoPE) and V are written into the cache as soon as they are computed, the
  prompt's included (``ggml_set_rows``, float32 → cache type), and attention always reads K and
  V back from the cache. A prompt's tokens therefore attend to their own *quantized* K/V.
* On the CPU backend the write converts each row with the type's ``from_float``: the reference
  quantizer for q4_0, q4_1, q5_0, q5_1 and iq4_nl (``quantize_row_iq4_nl_ref``: one pass and a
  least-squares scale, no scale search), and ggml-cpu's SIMD ``quantize_row_q8_0`` for q8_0. That
  SIMD version is not the reference: on x86 (AVX/AVX2) it scales by ``127 / amax`` instead of
  ``1 / (amax / 127)`` and rounds with ``_MM_ROUND_NEAREST`` (ties to even); on ARM NEON it keeps
  ``1 / d`` but rounds ties to even too (``vcvtnq_s32_f32``); the reference's ``roundf`` rounds
  them away from zero, and so does the CUDA backend's copy kernel (checked against a released
  x86-64 ggml CPU build: its AVX2 q8_0 writer is ``kernel="x86_avx"`` bit for bit).
* A quantized V cache needs flash attention (llama.cpp refuses one without it), so K and V are
  both stored token by token with blocks along head_dim, which must be a multiple of 32.
* Not part of the cache: ggml-cpu's attention quantizes Q to ``q8_0``/``q8_1`` before its dot
  products with a quantized K. That is engine arithmetic (:mod:`kvfp.runner.engines`), not what
  the cache keeps, and these schemes leave it out.

How kvfp mirrors it: each side is a :class:`~kvfp.compressors.codecs.GGMLBlocks` codec (``f16``
allowed on one side: a float16 cast) in a :class:`~kvfp.compressors.stores.CodecStore` whose
``prefill_reads_cache`` is set, so a prefill chunk attends over its own decoded K/V as llama.cpp
does. The quantizers are ggml's references (gguf-py reproduces them byte for byte); q8_0 thus
rounds ties away from zero — the reference and CUDA behaviour, not ggml-cpu's SIMD one, which
differs only for values that land on (or, on x86, within one float32 ulp of) a half step.
Decoded values are computed in float32 and cast to the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.codecs import GGMLBlocks, Half
from kvfp.compressors.gene import Gene
from kvfp.compressors.quantization.common import StorageScheme
from kvfp.kernels.ggml_quants import BITS, QK

CACHE_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
HALF = "f16"  # llama.cpp's default cache type, allowed as one side of a K/V pair
COMPENSATION = {"q4_1": ("zero_point",), "q5_1": ("zero_point",), "iq4_nl": ("nonlinear",)}


def _bits(t: str) -> int:
    return 16 if t == HALF else BITS[t]


@dataclass(frozen=True)
class GGMLCache(StorageScheme):
    """K in ggml type ``k_type``, V in ``v_type`` (see the module docstring); ``f16`` for at most
    one side. Named ``ggml-TYPE`` when both are the same, else ``ggml-k-TYPE-v-TYPE``."""

    k_type: str = "q8_0"
    v_type: str = "q8_0"

    family = "ggml"
    grammar = (f"ggml-TYPE | ggml-k-TYPE-v-TYPE  (TYPE in {', '.join(CACHE_TYPES)}; "
               f"{HALF} for one side of a pair)")
    pattern = r"ggml-(?:k-(?P<k>[^-+]+)-v-(?P<v>[^-+]+)|(?P<both>[^-+]+))"
    summary = "llama.cpp's KV cache types: 32-value blocks along head_dim with an fp16 scale, written as computed"
    prefill_reads_cache = True

    def __post_init__(self):
        for t in dict.fromkeys((self.k_type, self.v_type)):
            if t not in (*CACHE_TYPES, HALF):
                raise ValueError(f"unknown ggml cache type {t!r}; valid types: "
                                 f"{', '.join(CACHE_TYPES)} (and {HALF} for one side of ggml-k-TYPE-v-TYPE)")
        if self.k_type == self.v_type == HALF:
            raise ValueError(f"{HALF} for both K and V is the scheme 'fp16'")

    @property
    def name(self) -> str:
        if self.k_type == self.v_type:
            return f"ggml-{self.k_type}"
        return f"ggml-k-{self.k_type}-v-{self.v_type}"

    @property
    def gene(self) -> Gene:
        sides = (self.k_type, self.v_type)
        bk, bv = _bits(self.k_type), _bits(self.v_type)
        if self.k_type == self.v_type:
            params = {"bits": bk, "group_size": QK}
        else:
            mean = (bk + bv) / 2
            params = {"bits": int(mean) if mean.is_integer() else mean, "k_bits": bk, "v_bits": bv,
                      "group_size": QK}
        return Gene(
            algorithm="quantization",
            # an f16 side is a plain cast, like FP8's unit per-tensor scale
            granularity=tuple(dict.fromkeys("tensor" if t == HALF else "block" for t in sides)),
            strategy="dynamic",
            compensation=tuple(dict.fromkeys(c for t in sides for c in COMPENSATION.get(t, ()))),
            phase="both",  # written as computed: the prompt's own attention reads the cache
            params=params,
        )

    def codecs(self, layer_idx, num_layers, prep):
        def codec(t):
            return Half() if t == HALF else GGMLBlocks(t)

        return codec(self.k_type), codec(self.v_type)

    @classmethod
    def from_match(cls, groups):
        if groups["both"] is not None:
            return cls(groups["both"], groups["both"])
        return cls(groups["k"], groups["v"])

    @classmethod
    def canonical(cls):
        return [cls(t, t) for t in CACHE_TYPES] + [cls("q8_0", "q4_0")]
