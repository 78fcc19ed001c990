"""``quest-bB-F``: query-aware block selection over a full cache (Quest, arXiv 2406.10774)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.eviction.base import NUM, EvictionLayer, check_fraction, fmt
from kvfp.compressors.eviction.scores import block_min_max, quest_block_scores, topk_mask
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


def blocks_kept(fraction: float, n_blocks: torch.Tensor) -> torch.Tensor:
    """``ceil(fraction · n_blocks)`` per row (at least 1): ``(B,)`` → ``(B,)``."""
    return torch.clamp(torch.ceil(n_blocks.double() * fraction - 1e-9).long(), min=1)


class BlockSelectLayer(EvictionLayer):
    """Keeps every entry; each decode query, per query head, attends only to the entries of the
    ``ceil(fraction · n)`` blocks (of ``block`` consecutive real tokens; ``n`` blocks in the
    row) with the highest :func:`quest_block_scores` bound, the block holding the current token
    always among them. Multi-token forwards (prefill) attend in full."""

    def __init__(self, step, block: int, fraction: float, make_store=None):
        super().__init__(step, make_store)
        self.block, self.fraction = block, fraction

    def _blocks(self):
        """Block of each entry ``(B, 1, S)`` (``n_max`` for padding), blocks per row ``(B,)``, ``n_max``."""
        r = self.real_index(self.slots)  # (B, 1, S): Quest keeps every entry, shared by heads
        n = torch.div(self.valid.sum(-1)[:, 0] + self.block - 1, self.block, rounding_mode="floor")
        n_max = int(n.max())
        return torch.where(r >= 0, torch.div(r, self.block, rounding_mode="floor"), n_max), n, n_max

    def query_mask(self, query):  # (B, H, q, D)
        if query.shape[2] != 1 or self.fraction >= 1:
            return None
        block_id, n, n_max = self._blocks()
        kmin, kmax = block_min_max(self.kv.keys(), block_id, n_max)  # (B, Hkv, n_max, D)
        scores = quest_block_scores(query[:, :, 0], kmin, kmax)  # (B, H, n_max)
        ids = torch.arange(n_max, device=scores.device)
        scores = scores.masked_fill(ids >= n.view(-1, 1, 1), -torch.inf)  # blocks a row lacks
        scores = scores.masked_fill(ids == (n - 1).view(-1, 1, 1), torch.inf)  # the current block
        chosen = topk_mask(scores, blocks_kept(self.fraction, n))  # (B, H, n_max)
        H = chosen.shape[1]
        entry = torch.gather(torch.cat([chosen, chosen.new_zeros(*chosen.shape[:2], 1)], -1), -1,
                             block_id.expand(-1, H, -1))  # (B, H, S); padding → False
        return entry[:, :, None, :]

    def nbytes(self):
        """Entries plus the per-block, per-channel min and max keys (at the keys' dtype)."""
        if len(self) == 0:
            return 0
        _, n, _ = self._blocks()
        keys = self.kv.keys()
        return super().nbytes() + int(n.sum()) * keys.shape[1] * 2 * keys.shape[-1] * keys.element_size()


@dataclass(frozen=True)
class Quest(Scheme):
    """Quest (Tang et al., arXiv 2406.10774): query-aware selection of KV blocks ("pages").

    Budget: nothing is evicted; at each decode step, per query head, attention reads the top
    fraction ``F`` of the row's ``ceil(T / B)`` blocks of ``B`` tokens (``T`` tokens so far),
    rounded up, always including the block of the current token. Blocks are ranked by the bound
    ``sum_d max(q_d·max_d, q_d·min_d)`` over each block's per-channel min/max keys (kept beside
    the cache and counted in ``nbytes``). Prefill is full attention. Gene phase ``decode``.

    Deviations: the budget is a fraction of blocks rather than a token count, and every layer
    selects (Quest's evaluations keep the first two layers dense). Selection is per query head,
    as in the paper; with grouped-query attention the metadata is that of the shared KV head.
    """

    block: int = 16
    fraction: float = 0.25

    family = "quest"
    grammar = "quest-bB-F  (B ≥ 1 tokens per block; F in (0, 1]: fraction of blocks attended)"
    pattern = rf"quest-b(?P<block>\d+)-(?P<fraction>{NUM})"
    summary = "keep everything, attend only to the top query-relevant blocks"
    role = "eviction"

    def __post_init__(self):
        if self.block < 1:
            raise ValueError("block must be at least 1 token")
        check_fraction("fraction", self.fraction)

    @property
    def name(self) -> str:
        return f"quest-b{self.block}-{fmt(self.fraction)}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("block", "head"), strategy="dynamic",
            importance="query_aware_block", phase="decode",
            params={"block": self.block, "budget": self.fraction},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return BlockSelectLayer(step, self.block, self.fraction, make_store)

    @classmethod
    def from_match(cls, groups):
        return cls(block=int(groups["block"]), fraction=float(groups["fraction"]))
