"""Probe prompts: deterministic long-context inputs where compression shows."""

from kvfp.probes.builtin import Prompt, builtin_prompts
from kvfp.probes.probe import Probe, ProbeSuite, read_suite, write_suite

__all__ = ["Prompt", "builtin_prompts", "Probe", "ProbeSuite", "read_suite", "write_suite"]
