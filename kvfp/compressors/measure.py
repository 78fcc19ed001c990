"""Measure what a scheme really keeps: bytes per token per layer, from its stored tensors."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.scheme import Scheme


@dataclass
class MemoryFigure:
    scheme: str
    bytes_per_token_layer: float
    uncompressed_bytes_per_token_layer: int

    @property
    def ratio(self) -> float:
        return self.bytes_per_token_layer / self.uncompressed_bytes_per_token_layer


def measure_memory(model, tokenizer, schemes: list[Scheme], prompt_tokens: int = 1024,
                   new_tokens: int = 8) -> list[MemoryFigure]:
    """Run each scheme over one held-out prompt and read the cache's own byte count at the end.

    The figure is the cache's ``nbytes`` (codes, scales, zero points, indices, bookkeeping)
    divided by tokens processed and layers, after ``prompt_tokens + new_tokens - 1`` tokens.
    """
    from kvfp.probes.builtin import builtin_prompts
    from kvfp.runner import generate

    prompt = builtin_prompts(tokenizer, lengths=(prompt_tokens,))[0].ids
    figures = []
    for scheme in schemes:
        tr = generate(model, scheme, [prompt], new_tokens)[0]
        mem = tr.meta["memory"]
        figures.append(MemoryFigure(scheme.name, mem["bytes_per_token_layer"],
                                    mem["uncompressed_bytes_per_token_layer"]))
    return figures
