"""``benchmarks/bench_kernels.py`` without a GPU says so and succeeds."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script benchmarks for minutes")
def test_without_cuda_there_is_nothing_to_benchmark(capsys):
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: nothing to benchmark"
