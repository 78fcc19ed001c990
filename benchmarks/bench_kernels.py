"""Fused quantized decode attention against dequantize-then-attend and fp16 attention, on CUDA.

One decode step of a Llama-like layer (32 query heads, 8 KV heads, head_dim 128, float16) over a
cache of ``S`` entries per KV head, for three caches: int4 per token (symmetric), and KIVI at 4
and 2 bits (keys per channel in blocks of 32 tokens, values per token in groups of 32 channels,
the last 128 entries exact). Each row times, in the same run:

* ``fused``: :func:`kvfp.kernels.dispatch.decode_attention` (reads the packed codes once);
* ``deq+sdpa``: the torch reference, dequantize the whole cache to fp16, then
  ``F.scaled_dot_product_attention``;
* ``tdeq+sdpa``: the same with the Triton dequantize kernel;
* ``fp16``: ``F.scaled_dot_product_attention`` over an unquantized fp16 cache.

Times are medians of ``triton.testing.do_bench_cudagraph``: each method is replayed from a CUDA
graph (no Python launch overhead, as serving engines run decode), cycling through enough copies
of its inputs (3× the L2 size) that the cache it reads is never still in L2. ``eager ms`` is the
fused call as Python issues it (``triton.testing.do_bench``, launch overhead included).
Bandwidth is the bytes that must move (codes, scales, minima, residual, query, output) over
time, as a fraction of the device's peak HBM bandwidth (a table by device name).

``--sweep`` first times launch settings of the fused kernel at B=1, 32k entries and runs the
table with each cache's fastest.

    python benchmarks/bench_kernels.py [--contexts 4096,32768,131072] [--batches 1,8]
        [--caches int4-pertoken,kivi-4,kivi-2] [--sweep int4-pertoken,kivi-2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

H, HKV, D = 32, 8, 128
DEVICE = "cuda"
PEAK_BW = {  # bytes/s, by the name torch reports
    "NVIDIA H100 80GB HBM3": 3.35e12,  # SXM
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H200": 4.8e12,
    "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
}


def caches():
    from kvfp.kernels.quant_layout import QuantLayout

    return {  # name -> (key layout, value layout, exact residual entries)
        "int4-pertoken": (QuantLayout.per_token(4), QuantLayout.per_token(4), 0),
        "kivi-4": (QuantLayout.channel_blocks(4, 32), QuantLayout.channel_groups(4, 32), 128),
        "kivi-2": (QuantLayout.channel_blocks(2, 32), QuantLayout.channel_groups(2, 32), 128),
    }


def sdpa_gqa(q, k, v):
    """Decode attention with plain SDPA: the query heads of a KV head become its queries."""
    B = q.shape[0]
    out = F.scaled_dot_product_attention(q.view(B, HKV, H // HKV, D), k, v)
    return out.view(B, H, 1, D)


def eager_ms(fn) -> float:
    """Median time of one call as Python issues it (launch overhead included; L2 flushed)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def graph_ms(make_fn, nbytes: int) -> float:
    """Median time of one call replayed from a CUDA graph (no launch overhead), cycling through
    enough copies of the inputs that the one being read is never still in L2.

    ``make_fn(i)`` returns the call on the ``i``-th copy of the inputs.
    """
    import triton.testing

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = getattr(props, "L2_cache_size", 64 << 20)
    copies = max(1, math.ceil(3 * l2 / nbytes))
    fns = [make_fn(i) for i in range(copies)]

    def all_copies():
        for f in fns:
            f()

    return triton.testing.do_bench_cudagraph(all_copies, rep=40, return_mode="median") / copies


def setup(cache: str, B: int, S: int):
    from kvfp.kernels import dispatch

    k_layout, v_layout, R = caches()[cache]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    k16 = torch.randn(B, HKV, S, D, device=DEVICE, dtype=torch.float16, generator=g)
    v16 = torch.randn(B, HKV, S, D, device=DEVICE, dtype=torch.float16, generator=g)
    q = torch.randn(B, H, 1, D, device=DEVICE, dtype=torch.float16, generator=g)
    s_q = S - R
    kq = dispatch.quantize_packed(k16[:, :, :s_q], k_layout)
    vq = dispatch.quantize_packed(v16[:, :, :s_q], v_layout)
    kr = k16[:, :, s_q:].contiguous() if R else None
    vr = v16[:, :, s_q:].contiguous() if R else None
    return q, k16, v16, kq, vq, kr, vr


def copy_of(x):
    from kvfp.kernels.quant_layout import QuantTensor

    if x is None:
        return None
    if isinstance(x, QuantTensor):
        return QuantTensor(x.codes.clone(), x.scale.clone(), copy_of(x.mn), x.layout, x.head_dim)
    return x.clone()


def copies(*inputs):
    """``make(i)`` helper: the inputs themselves for copy 0, fresh clones for the others."""
    def get(i):
        return inputs if i == 0 else tuple(copy_of(x) for x in inputs)
    return get


def with_residual(x, r):
    return x if r is None else torch.cat([x, r], dim=2)


def fused_call(settings: dict):
    from kvfp.kernels.decode_attention_triton import decode_attention

    return lambda q, kq, vq, kr, vr: decode_attention(q, kq, vq, kr, vr, **settings)


def row(cache: str, B: int, S: int, peak: float | None, settings: dict) -> dict:
    from kvfp.kernels import dispatch

    q, k16, v16, kq, vq, kr, vr = setup(cache, B, S)
    fused = fused_call(settings)
    deq = lambda q, kq, vq, kr, vr: sdpa_gqa(q, with_residual(kq.dequantize(torch.float16), kr),  # noqa: E731
                                             with_residual(vq.dequantize(torch.float16), vr))
    tdeq = lambda q, kq, vq, kr, vr: sdpa_gqa(  # noqa: E731
        q, with_residual(dispatch.dequantize_packed(kq, torch.float16), kr),
        with_residual(dispatch.dequantize_packed(vq, torch.float16), vr))
    quant_inputs = copies(q, kq, vq, kr, vr)
    res_bytes = 0 if kr is None else 2 * kr.numel() * kr.element_size()
    io = 2 * q.numel() * q.element_size()
    fused_bytes = kq.nbytes() + vq.nbytes() + res_bytes + io
    fp16_bytes = 2 * k16.numel() * k16.element_size() + io
    err = (fused(q, kq, vq, kr, vr).float() - deq(q, kq, vq, kr, vr).float()).abs().max().item()
    ms = {
        "fused": graph_ms(lambda i: partial(fused, *quant_inputs(i)), fused_bytes),
        "fused_eager": eager_ms(lambda: fused(q, kq, vq, kr, vr)),
        "deq+sdpa": graph_ms(lambda i: partial(deq, *quant_inputs(i)), fused_bytes),
        "tdeq+sdpa": graph_ms(lambda i: partial(tdeq, *quant_inputs(i)), fused_bytes),
    }
    fp16_inputs = copies(q, k16, v16)
    ms["fp16"] = graph_ms(lambda i: partial(sdpa_gqa, *fp16_inputs(i)), fp16_bytes)
    out = {"cache": cache, "batch": B, "context": S, "settings": settings, "max_abs_err_vs_ref": err,
           **{f"{k}_ms": v for k, v in ms.items()},
           "fused_vs_deq": ms["deq+sdpa"] / ms["fused"], "fused_vs_tdeq": ms["tdeq+sdpa"] / ms["fused"],
           "fused_vs_fp16": ms["fp16"] / ms["fused"],
           "fused_bytes": fused_bytes, "fused_GBps": fused_bytes / ms["fused"] / 1e6,
           "fp16_bytes": fp16_bytes, "fp16_GBps": fp16_bytes / ms["fp16"] / 1e6}
    out["fused_peak_frac"] = None if peak is None else out["fused_GBps"] * 1e9 / peak
    out["fp16_peak_frac"] = None if peak is None else out["fp16_GBps"] * 1e9 / peak
    return out


SWEEP = [dict(block_n=bn, num_warps=4, num_stages=st) for bn in (16, 32, 64) for st in (1, 2)]


def sweep(cache: str, B: int, S: int, peak: float | None) -> list[dict]:
    """Launch settings of the fused kernel (entries per tile, pipeline stages; then programs per
    SM for the best of those) at one shape."""
    q, _, _, kq, vq, kr, vr = setup(cache, B, S)
    nbytes = kq.nbytes() + vq.nbytes()
    inputs = copies(q, kq, vq, kr, vr)
    rows = []

    def measure(settings):
        ms = graph_ms(lambda i: partial(fused_call(settings), *inputs(i)), nbytes)
        gbps = nbytes / ms / 1e6
        rows.append({"cache": cache, "batch": B, "context": S, **settings, "ms": ms, "GBps": gbps,
                     "peak_frac": None if peak is None else gbps * 1e9 / peak})

    for settings in SWEEP:
        measure(settings)
    best = min(rows, key=lambda r: r["ms"])
    for per_sm in (8, 16):
        measure({k: best[k] for k in SWEEP[0]} | {"per_sm": per_sm})
    return rows


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def write_json_new(path: Path, payload: dict) -> None:
    """Write ``payload`` to a new file ``path`` (never over an existing one), atomically."""
    if path.exists():
        raise SystemExit(f"error: {path} exists; results are never overwritten")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="4096,32768,131072")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--caches", default="int4-pertoken,kivi-4,kivi-2")
    ap.add_argument("--sweep", default="", help="caches (comma-separated) whose fused-kernel launch settings are "
                    "also timed at 32k, B=1")
    ap.add_argument("--json", type=Path, help="write the rows to this new JSON file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 0
    import triton

    names = [c for c in args.caches.split(",") if c]
    unknown = sorted((set(names) | {c for c in args.sweep.split(",") if c}) - set(caches()))
    if unknown:
        print(f"error: unknown cache {', '.join(unknown)}; choose from {', '.join(caches())}", file=sys.stderr)
        return 2
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.cuda.get_device_name()
    peak = PEAK_BW.get(device)
    print(f"{device}; peak HBM bandwidth {'unknown peak' if peak is None else f'{peak / 1e12:.2f} TB/s'}; "
          f"torch {torch.__version__}, triton {triton.__version__}; H={H}, Hkv={HKV}, D={D}, float16")
    head = (f"{'cache':<14}{'B':>3}{'context':>9}{'fused ms':>10}{'deq+sdpa':>10}{'tdeq+sdpa':>10}{'fp16 ms':>9}"
            f"{'x deq':>7}{'x tdeq':>7}{'x fp16':>7}{'fused GB/s':>11}{'%peak':>7}{'fp16 GB/s':>10}{'%peak':>7}"
            f"{'err':>9}{'eager ms':>10}")
    settings, sweeps = {}, []
    swept = [c for c in args.sweep.split(",") if c]
    if swept:
        print("\nlaunch settings of the fused kernel, B=1, context 32768 (CUDA-graph timing)")
        print(f"{'cache':<14}{'block_n':>8}{'warps':>6}{'stages':>7}{'per_sm':>7}{'ms':>9}{'GB/s':>7}{'%peak':>7}")
        for cache in swept:
            found = sweep(cache, 1, 32768, peak)
            sweeps += found
            for s in found:
                pk = None if s["peak_frac"] is None else 100 * s["peak_frac"]
                print(f"{cache:<14}{s['block_n']:>8}{s['num_warps']:>6}{s['num_stages']:>7}{s.get('per_sm', 4):>7}"
                      f"{s['ms']:>9.4f}{s['GBps']:>7.0f}{fmt(pk, '.1f'):>7}", flush=True)
            best = min(found, key=lambda r: r["ms"])
            settings[cache] = {k: best[k] for k in ("block_n", "num_warps", "num_stages", "per_sm") if k in best}
        print()
    for cache in names:
        print(f"fused settings for {cache}: {settings.get(cache) or 'defaults'}")
    print(head)
    rows = []
    for cache in names:
        for B in batches:
            for S in contexts:
                r = row(cache, B, S, peak, settings.get(cache, {}))
                torch.cuda.empty_cache()  # the row's caches are gone: give their memory back for the next
                rows.append(r)
                pct = lambda x: None if x is None else 100 * x  # noqa: E731
                print(f"{cache:<14}{B:>3}{S:>9}{r['fused_ms']:>10.4f}{r['deq+sdpa_ms']:>10.4f}"
                      f"{r['tdeq+sdpa_ms']:>10.4f}{r['fp16_ms']:>9.4f}{r['fused_vs_deq']:>7.2f}"
                      f"{r['fused_vs_tdeq']:>7.2f}{r['fused_vs_fp16']:>7.2f}{r['fused_GBps']:>11.0f}"
                      f"{fmt(pct(r['fused_peak_frac']), '.1f'):>7}{r['fp16_GBps']:>10.0f}"
                      f"{fmt(pct(r['fp16_peak_frac']), '.1f'):>7}{r['max_abs_err_vs_ref']:>9.1e}"
                      f"{r['fused_eager_ms']:>10.4f}", flush=True)
    if args.json:
        write_json_new(args.json, {"device": device, "peak_Bps": peak, "torch": torch.__version__,
                                   "triton": triton.__version__, "rows": rows, "sweep": sweeps})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
