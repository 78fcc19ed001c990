"""Probe prompts: deterministic long-context inputs where compression shows."""

from kvfp.probes.builtin import Prompt, builtin_prompts
from kvfp.probes.families import FAMILIES
from kvfp.probes.identity import tokenizer_hash
from kvfp.probes.probe import Probe, ProbeSuite, read_suite, write_suite
from kvfp.probes.suites import GENERATOR_VERSION, SUITES, default_lengths, generate_suite

__all__ = ["Prompt", "builtin_prompts", "Probe", "ProbeSuite", "read_suite", "write_suite", "tokenizer_hash",
           "generate_suite", "SUITES", "FAMILIES", "GENERATOR_VERSION", "default_lengths"]
