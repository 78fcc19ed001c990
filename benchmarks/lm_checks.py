"""Print the LM-behaviour measurements (a)–(d) of ``kvfp.models.lm_checks`` for models side by side.

    python benchmarks/lm_checks.py [MODEL ...] [--full] [--windows N] [--copies N] [--documents N]
                                   [--sink-windows N]

Default models: kvfp-tiny and smollm2-135m. (a), (b) and (d) run the way each model's tokenizer
feeds it: kvfp-tiny's puts ``<|bos|>`` at position 0, SmolLM2's puts nothing there. (c), the
attention mass on position 0, is measured both with the tokenizer's BOS token there and with
plain text there, which tells a sink on the first position from a sink on the BOS token.

The default sizes fit 2 CPU cores (smollm2-135m runs 1024 tokens in 1–2 s there, 4–8 s when the
cores are shared): 4 windows for (a), 16 copy spans for (b), the first 8 qualifying documents for
(d), 2 windows per sink measurement. ``--full`` uses ``run_checks``' own defaults (8 windows, 64
spans, every document, 4 sink windows), the sizes of the figures in benchmarks/RESULTS.md; on
kvfp-tiny the copy ratio of 16 spans can differ from that of 64 by a few hundredths.

Losses are nats per token of each model's own tokenizer: compare a model's loss with its own
unigram entropy, not with another model's loss.
"""

import argparse
import time

from kvfp.models import load
from kvfp.models.lm_checks import run_checks, sink_mass, sink_windows
from kvfp.probes.filler import prefix_ids

LABEL = 44
COLUMN = 18


def measure(name: str, sizes: dict) -> dict:
    model, tok = load(name)
    t0 = time.time()
    own_bos = bool(prefix_ids(tok))  # what the tokenizer itself puts at position 0
    checks = run_checks(model, tok, bos=own_bos, **sizes["checks"])
    sinks = {"with" if own_bos else "without": checks.sink_mass_per_layer}
    if own_bos:
        sinks["without"] = sink_mass(model, sink_windows(tok, sizes["sink"], bos=False))
    elif tok.bos_token_id is not None:
        sinks["with"] = sink_mass(model, sink_windows(tok, sizes["sink"], bos=True))
    return {"name": name, "checks": checks, "sinks": sinks, "seconds": time.time() - t0,
            "bos": tok.bos_token if tok.bos_token_id is not None else None, "own_bos": own_bos}


def row(label: str, values) -> None:
    print(label.ljust(LABEL) + "".join(str(v).rjust(COLUMN) for v in values))


def report(results: list[dict]) -> None:
    row("", [r["name"] for r in results])
    row("position 0 in (a), (b), (d)", [r["bos"] if r["own_bos"] else "text (no BOS)" for r in results])
    cs = [r["checks"] for r in results]
    row("(a) held-out loss, nats/token", [f"{c.heldout_loss:.4f}" for c in cs])
    row("    unigram entropy of held-out tokens", [f"{c.unigram_entropy:.4f}" for c in cs])
    row("    loss / unigram entropy", [f"{c.heldout_loss / c.unigram_entropy:.3f}" for c in cs])
    row("(b) copy: loss on the first copy", [f"{c.copy_first_loss:.4f}" for c in cs])
    row("    loss on the second copy", [f"{c.copy_second_loss:.4f}" for c in cs])
    row("    ratio (target <= 0.35)", [f"{c.copy_ratio:.3f}" for c in cs])
    row("(d) held-out documents of >= 2048 tokens", [c.n_documents for c in cs])
    row("    loss over positions 256-1024", [f"{c.loss_256_1024:.4f}" for c in cs])
    row("    loss over positions 1024-2048", [f"{c.loss_1024_2048:.4f}" for c in cs])
    row("    stream windows 256-1024", [f"{c.stream_loss_256_1024:.4f}" for c in cs])
    row("    stream windows 1024-2048", [f"{c.stream_loss_1024_2048:.4f}" for c in cs])
    row("(c) sink mass, min over layers >= 1:", [])
    for which, label in (("with", "    BOS token at position 0"), ("without", "    text at position 0")):
        row(label, [f"{min(r['sinks'][which][1:]):.3f}" if which in r["sinks"] else "-" for r in results])
    row("    layers where it is >= 0.2 (with BOS)",
        [f"{sum(v >= 0.2 for v in r['sinks']['with'])}/{len(r['sinks']['with'])}" if "with" in r["sinks"] else "-"
         for r in results])
    row("    the same without BOS",
        [f"{sum(v >= 0.2 for v in r['sinks']['without'])}/{len(r['sinks']['without'])}" for r in results])
    row("seconds", [f"{r['seconds']:.0f}" for r in results])
    print("\n(c) attention mass on position 0 from queries >= 256, per layer:")
    for r in results:
        for which, sinks in r["sinks"].items():
            what = r["bos"] if which == "with" else "text"
            print(f"  {r['name']}, {what} at position 0: " + " ".join(f"{v:.3f}" for v in sinks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["kvfp-tiny", "smollm2-135m"])
    ap.add_argument("--full", action="store_true", help="run_checks' own sizes (slow on large models)")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--documents", type=int, default=8)
    ap.add_argument("--sink-windows", type=int, default=2)
    args = ap.parse_args()
    if args.full:
        sizes = {"checks": {}, "sink": 4}
    else:
        sizes = {"checks": {"n_windows": args.windows, "n_copies": args.copies, "max_documents": args.documents,
                            "n_sink_windows": args.sink_windows}, "sink": args.sink_windows}
    report([measure(name, sizes) for name in args.models])


if __name__ == "__main__":
    main()
