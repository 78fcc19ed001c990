"""Schemes that change the representation of K/V: low rank, shared latents, token merging."""

from kvfp.compressors.projection.latent import LatentMLA
from kvfp.compressors.projection.lowrank import LowRankSVD
from kvfp.compressors.projection.merge import MergeAdjacent

FAMILIES = (LowRankSVD, LatentMLA, MergeAdjacent)
