"""Quantization schemes: K/V kept as low-precision codes (role ``storage`` where token-local)."""

from kvfp.compressors.quantization.int_pertoken import IntPerToken

FAMILIES = (IntPerToken,)
