"""A training term that gives kvfp-tiny attention sinks: a floor on attention mass to BOS.

Real LMs park a large share of attention on the first token (StreamingLLM's "attention sinks";
Gu et al. 2024, "When Attention Sink Emerges in Language Models", find them emerging after
effective optimisation on sufficient training data). kvfp-tiny sees about 6.4M tokens, and in
every recipe tried without this term (21 GPU runs at RoPE base 10000, the base-500000 retrain,
fine-tunes with random-id rows, proxies with 16 heads) layers 1-3 put at most 0.04 of the
attention from late queries on BOS: every head stays busy with content. Schemes whose
fingerprint depends on sinks (StreamingLLM, eviction that keeps or drops position 0, per-token
quantisation of the BOS key) can then behave unlike they do on real models.

So training adds, from ``start_step`` on, ``weight * sum(relu(floor - m_l))`` over layers
``l >= from_layer``, where ``m_l`` is the mean, over heads and a random sample of query positions, of
the softmax weight on key 0. It is a hinge on the layer mean: the model chooses which heads park
and how much, and the term is zero once a layer's mean reaches the floor. The sink is trained
in, not emergent; benchmarks/RESULTS.md reports what it costs in loss and what it does to
sink-dependent schemes.

The term is computed inside an attention function registered with transformers'
``AttentionInterface`` for training only: the output is plain causal sdpa (the saved model runs
with the stock implementations), and BOS mass is computed beside it for the sampled queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "kvfp-sink-floor-train"


@dataclass
class SinkFloor:
    floor: float = 0.3  # per-layer mean BOS mass the hinge asks for (LM check (c) asks 0.2)
    weight: float = 1.0
    queries: int = 64  # query positions sampled per layer and step
    min_pos: int = 16  # sampled queries sit at positions >= this (or a quarter of the row)
    from_layer: int = 1  # real LMs' first layer has little sink mass; the check skips it too
    # Trained on from this step, once the copying circuit has formed: with the term on from step
    # 0, kvfp-tiny's copy ratio was still 0.98 at step 1400 (0.37 without it)
    start_step: int = 1600


class SinkMassCollector:
    """Per-layer BOS mass of the current forward pass, recorded by the training attention."""

    def __init__(self, cfg: SinkFloor, seed: int):
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.mass: dict[int, torch.Tensor] = {}

    def sample_queries(self, seq_len: int) -> torch.Tensor:
        lo = min(self.cfg.min_pos, seq_len // 4)
        return torch.randint(lo, seq_len, (self.cfg.queries,), generator=self.gen)

    def penalty(self) -> torch.Tensor:
        terms = [torch.relu(self.cfg.floor - m) for layer, m in sorted(self.mass.items())
                 if layer >= self.cfg.from_layer]
        self.mass = {}
        return self.cfg.weight * torch.stack(terms).sum()


def bos_mass(query: torch.Tensor, key: torch.Tensor, scaling: float, positions: torch.Tensor) -> torch.Tensor:
    """Mean causal softmax weight on key 0 for the queries at ``positions``.

    query ``(B, H, T, D)``, key ``(B, Hkv, T, D)`` (after RoPE), unpadded rows starting with BOS.
    Computed in float32 outside autocast: it is a small matrix, and the hinge needs it exact.
    """
    with torch.autocast(query.device.type, enabled=False):
        k = repeat_kv(key, query.shape[1] // key.shape[1]).float()
        scores = torch.matmul(query[:, :, positions].float(), k.transpose(2, 3)) * scaling
        keys = torch.arange(key.shape[2], device=query.device)
        scores = scores.masked_fill(keys[None, :] > positions[:, None].to(query.device), float("-inf"))
        return torch.softmax(scores, dim=-1)[..., 0].mean()


def sink_floor_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    collector: SinkMassCollector | None = kwargs.pop("sink_collector", None)
    if collector is None:
        raise RuntimeError(f"attention implementation {NAME!r} is for training: pass sink_collector=...")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    out = sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=True)
    collector.mass[module.layer_idx] = bos_mass(query, key, scaling, collector.sample_queries(query.shape[2]))
    return out


AttentionInterface.register(NAME, sink_floor_attention)
