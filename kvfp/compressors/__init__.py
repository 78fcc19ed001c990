"""KV-cache compression schemes: storage policies for K/V, each with its gene."""

from kvfp.compressors.gene import Gene
from kvfp.compressors.registry import canonical_names, canonical_schemes, parse_scheme
from kvfp.compressors.scheme import Scheme

__all__ = ["Gene", "Scheme", "parse_scheme", "canonical_schemes", "canonical_names"]
