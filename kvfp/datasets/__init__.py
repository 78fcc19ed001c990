"""Datasets of traces: a folder with ``manifest.json``, ``probes.jsonl`` and Parquet shards, read
with :func:`open_dataset` and exported in endpoint log shapes with :func:`export_dataset`."""

from kvfp.datasets.dataset import Dataset, open_dataset
from kvfp.datasets.export import FORMATS, export_dataset

__all__ = ["Dataset", "open_dataset", "export_dataset", "FORMATS"]
