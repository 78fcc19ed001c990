"""Schemes that change the representation of K/V: low rank, shared latents, token merging."""

FAMILIES = ()
