"""Quantization schemes: K/V kept as low-precision codes (role ``storage`` where a hybrid can use
them)."""

from kvfp.compressors.quantization.clipping import IntPerTokenMSE, IntPerTokenQuantile
from kvfp.compressors.quantization.fp4 import FP4E2M1
from kvfp.compressors.quantization.fp8 import FP8Cache
from kvfp.compressors.quantization.fp16 import FP16Cache
from kvfp.compressors.quantization.ggml import GGMLCache
from kvfp.compressors.quantization.hf_requant import HFRequant
from kvfp.compressors.quantization.int_group import IntGroup
from kvfp.compressors.quantization.int_perchannel import IntPerChannel
from kvfp.compressors.quantization.int_pertoken import IntPerToken, IntPerTokenZP
from kvfp.compressors.quantization.kivi import Kivi
from kvfp.compressors.quantization.kvquant import KVQuant
from kvfp.compressors.quantization.mixed import MixedPrecision
from kvfp.compressors.quantization.nonlinear import IntLog

FAMILIES = (
    IntPerToken, IntPerTokenZP, IntGroup, IntPerChannel, Kivi, HFRequant, FP8Cache, FP4E2M1,
    IntPerTokenMSE, IntPerTokenQuantile, IntLog, KVQuant, MixedPrecision, FP16Cache, GGMLCache,
)
