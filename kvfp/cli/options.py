"""Option types shared by commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[str, typer.Option("--model", "-m",
                                         help="kvfp-tiny, smollm2-135m, a local HF folder, or a hub id.")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder; must not exist (or be empty).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")]
AttnOpt = Annotated[str, typer.Option("--attn", help="The model's attention: eager or sdpa.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="Whose arithmetic the model does: transformers, or "
                                                         "llama.cpp (its CPU backend: activations quantized "
                                                         "for the weights' GGUF types, f16 cache and query).")]
FlashAttnOpt = Annotated[bool, typer.Option("--flash-attn", help="With --engine: the engine's flash-attention "
                                                                 "kernel instead of its mul_mat path.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
