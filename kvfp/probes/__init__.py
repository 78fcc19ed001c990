"""Probe prompts: deterministic long-context inputs where compression shows."""

from kvfp.probes.builtin import Prompt, builtin_prompts

__all__ = ["Prompt", "builtin_prompts"]
