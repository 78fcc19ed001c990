"""Does a model behave like a real LM in the ways KV compression shows? Four measurements.

(a) held-out loss against the unigram entropy of the held-out tokens;
(b) in-context copying: loss on the second copy of a repeated span over the first;
(c) attention sinks: attention mass on position 0 from late queries, per layer;
(d) long context: loss over positions 1024–2048 against 256–1024.

All use held-out text only and are deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from kvfp.models.corpus import load_split


@dataclass
class LMChecks:
    heldout_loss: float
    unigram_entropy: float
    copy_first_loss: float
    copy_second_loss: float
    copy_ratio: float
    sink_mass_per_layer: list[float]
    loss_256_1024: float
    loss_1024_2048: float

    def to_dict(self) -> dict:
        return asdict(self)


def heldout_stream(tok) -> np.ndarray:
    ids = []
    for f in load_split("heldout"):
        ids.extend(tok(f.text, add_special_tokens=False, verbose=False)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def _windows(stream, bos, n, length):
    body = length - 1
    return [np.concatenate([[bos], stream[i * body : (i + 1) * body]]) for i in range(n)
            if (i + 1) * body <= len(stream)]


@torch.no_grad()
def _token_losses(model, x: np.ndarray) -> np.ndarray:
    """Per-position next-token loss; entry ``t`` is the loss of predicting token ``t+1``."""
    ids = torch.from_numpy(x)[None]
    logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").numpy()


@torch.no_grad()
def run_checks(model, tok, *, n_windows: int = 8, n_copies: int = 8, seed: int = 0) -> LMChecks:
    model.eval()
    stream = heldout_stream(tok)
    bos = tok.bos_token_id
    rng = np.random.default_rng(seed)

    # (a) and (d): BOS-prefixed 2048-token windows of held-out text
    losses = np.stack([_token_losses(model, w) for w in _windows(stream, bos, n_windows, 2048)])
    counts = np.bincount(stream, minlength=model.config.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    # position t of `losses` predicts token t+1
    loss_mid = float(losses[:, 255:1023].mean())
    loss_late = float(losses[:, 1023:2047].mean())

    # (b) a 128-token span placed twice in a 1024-token context of other held-out text
    first, second = [], []
    for _ in range(n_copies):
        span_at = int(rng.integers(0, len(stream) - 128))
        fill_at = int(rng.integers(0, len(stream) - 1024))
        span, ctx = stream[span_at : span_at + 128], stream[fill_at : fill_at + 1023].copy()
        a = int(rng.integers(32, 300))
        b = int(rng.integers(a + 128 + 64, 1023 - 128))
        ctx[a : a + 128], ctx[b : b + 128] = span, span
        x = np.concatenate([[bos], ctx])  # span tokens sit at positions a+1.. and b+1..
        tl = _token_losses(model, x)
        first.append(tl[a : a + 128].mean())
        second.append(tl[b : b + 128].mean())
    copy_first, copy_second = float(np.mean(first)), float(np.mean(second))

    # (c) attention probabilities need the eager path
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        w = torch.from_numpy(_windows(stream, bos, 2, 1024)[1])[None]
        attns = model(input_ids=w, output_attentions=True).attentions  # per layer (1, H, T, T)
        sinks = [float(a[0, :, 256:, 0].mean()) for a in attns]
    finally:
        model.set_attn_implementation(prev)

    return LMChecks(
        heldout_loss=float(losses.mean()), unigram_entropy=unigram,
        copy_first_loss=copy_first, copy_second_loss=copy_second, copy_ratio=copy_second / copy_first,
        sink_mass_per_layer=sinks, loss_256_1024=loss_mid, loss_1024_2048=loss_late,
    )
