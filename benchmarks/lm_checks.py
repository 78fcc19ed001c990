"""Print the four LM-behaviour measurements (a)–(d) of a model (default: the packaged kvfp-tiny).

    python benchmarks/lm_checks.py [MODEL]
"""

import sys
import time

from kvfp.models import load
from kvfp.models.lm_checks import run_checks


def main(name: str = "kvfp-tiny") -> None:
    model, tok = load(name)
    t0 = time.time()
    c = run_checks(model, tok)
    print(f"model {name}  ({time.time() - t0:.1f}s)")
    print(f"(a) held-out loss {c.heldout_loss:.4f} nats/token vs unigram entropy {c.unigram_entropy:.4f} "
          f"(ratio {c.heldout_loss / c.unigram_entropy:.3f})")
    print(f"(b) copy: first copy {c.copy_first_loss:.4f}, second copy {c.copy_second_loss:.4f}, "
          f"ratio {c.copy_ratio:.3f} (target <= 0.35)")
    sinks = " ".join(f"{m:.3f}" for m in c.sink_mass_per_layer)
    print(f"(c) attention mass on position 0 from queries >= 256, per layer: {sinks} "
          f"(min after layer 0: {min(c.sink_mass_per_layer[1:]):.3f}, target >= 0.2)")
    print(f"(d) within {c.n_documents} held-out documents, loss over positions 256-1024 {c.loss_256_1024:.4f}, "
          f"1024-2048 {c.loss_1024_2048:.4f} (target: second <= first)")
    print(f"    over windows of the joined held-out stream (files cut mid-window): 256-1024 "
          f"{c.stream_loss_256_1024:.4f}, 1024-2048 {c.stream_loss_1024_2048:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
