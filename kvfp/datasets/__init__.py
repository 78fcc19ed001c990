"""Trace storage: a folder with a manifest, traces as JSONL and optional logits."""

from kvfp.datasets.traces_dir import read_traces, write_traces

__all__ = ["write_traces", "read_traces"]
