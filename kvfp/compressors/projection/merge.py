"""``merge-B``: similar adjacent tokens merged into their weighted average (DMC lineage,
arXiv 2403.09636), attention to a merged entry biased by log(count) (ToMe's proportional
attention, arXiv 2210.09461)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kvfp.compressors.gene import Gene
from kvfp.compressors.layer import KvfpLayer, tensor_bytes
from kvfp.compressors.scheme import Scheme


def adjacent_cosine(k: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each entry with the next: ``(H, S, D)`` → ``(H, S - 1)``."""
    kn = torch.nn.functional.normalize(k.float(), dim=-1)
    return (kn[:, :-1] * kn[:, 1:]).sum(-1)


def merge_adjacent(k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor, slots: torch.Tensor, merges: int):
    """Greedily merge, ``merges`` times, the adjacent pair whose keys are most similar (cosine),
    independently in each head.

    ``k, v``: ``(H, S, D)`` in slot order; ``counts, slots``: ``(H, S)``. A merged entry is the
    count-weighted average of the pair's keys and values, counts the tokens of both, and takes
    the *later* entry's slot (so no query sees it before all its tokens exist). After each merge
    only the new entry's similarities to its neighbours change; ties go to the earliest pair.
    Returns the same four tensors with ``S - merges`` entries.
    """
    H, S, _ = k.shape
    if merges <= 0:
        return k, v, counts, slots
    if merges >= S:
        raise ValueError(f"cannot merge {S} entries {merges} times")
    kf, vf, c = k.float().clone(), v.float().clone(), counts.clone()
    kn = torch.nn.functional.normalize(kf, dim=-1)
    h = torch.arange(H, device=k.device)
    ar = torch.arange(S, device=k.device).expand(H, S)
    nxt, prv = (ar + 1).clone(), (ar - 1).clone()  # linked list of live entries; S / -1: none
    alive = torch.ones(H, S, dtype=torch.bool, device=k.device)
    sim = torch.full((H, S), -math.inf, device=k.device)  # sim[j]: entry j with its next live entry
    sim[:, :-1] = (kn[:, :-1] * kn[:, 1:]).sum(-1)
    for _ in range(merges):
        j = sim.argmax(-1)  # (H,) left entry of the most similar pair
        n, p = nxt[h, j], prv[h, j]
        cj, cn = c[h, j].unsqueeze(-1).float(), c[h, n].unsqueeze(-1).float()
        kf[h, n] = (cj * kf[h, j] + cn * kf[h, n]) / (cj + cn)
        vf[h, n] = (cj * vf[h, j] + cn * vf[h, n]) / (cj + cn)
        c[h, n] = c[h, j] + c[h, n]
        kn[h, n] = torch.nn.functional.normalize(kf[h, n], dim=-1)
        alive[h, j] = False
        sim[h, j] = -math.inf
        # unlink j: p <-> n
        has_p, pc = p >= 0, p.clamp(min=0)
        nxt[h, pc] = torch.where(has_p, n, nxt[h, pc])
        prv[h, n] = p
        sim_p = (kn[h, pc] * kn[h, n]).sum(-1)
        sim[h, pc] = torch.where(has_p, sim_p, sim[h, pc])
        nn = nxt[h, n]
        has_nn, nnc = nn < S, nn.clamp(max=S - 1)
        sim[h, n] = torch.where(has_nn, (kn[h, n] * kn[h, nnc]).sum(-1), -math.inf)
    keep = alive.nonzero()[:, 1].view(H, S - merges)  # row-major: ascending per head

    def pick(t):
        return torch.gather(t, 1, keep.view(H, -1, *([1] * (t.dim() - 2))).expand(H, -1, *t.shape[2:]))

    return pick(kf).to(k.dtype), pick(vf).to(v.dtype), pick(c), pick(slots)


class MergeLayer(KvfpLayer):
    """Keeps at most ``ceil(budget × n)`` entries per row, ``n`` being the real tokens seen.

    Every forward appends its tokens, then merges the most similar adjacent pairs (per KV head)
    until the budget holds. A prefill forward (more than one token) attends over its own K/V as
    projected and merges afterwards; a decode step merges first, so its query reads the cache
    as it stands at that step (DMC merges the new token before attending, too).

    Batches with left padding stay rectangular: each row's live entries are kept in slot order
    at the end of the entry axis, after masked filler entries (rows with fewer live entries have
    more filler). Rows are therefore merged exactly as they would be alone.
    """

    def __init__(self, step, budget: float):
        super().__init__(step)
        self.budget = budget
        self.clear()

    def clear(self) -> None:
        self.k = self.v = None  # (B, H, S, D)
        self.slots = self.valid = self.counts = None  # (B, H, S); counts: tokens per entry
        self.n_tokens = None  # (B,) real tokens seen
        self._visible_counts = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def store(self, k, v, slots, valid):
        B, H, q, _ = k.shape
        counts = torch.ones(B, H, q, dtype=torch.int32, device=k.device)

        def cat(old, new):
            return new.contiguous() if old is None else torch.cat([old, new], dim=2)

        self.k, self.v = cat(self.k, k), cat(self.v, v)
        self.slots, self.valid, self.counts = cat(self.slots, slots), cat(self.valid, valid), cat(self.counts, counts)
        n = valid[:, 0].sum(-1)
        self.n_tokens = n if self.n_tokens is None else self.n_tokens + n
        if q > 1:
            seen = self.k, self.v, self.slots, self.valid
            self._visible_counts = self.counts
            self._merge()
            return seen
        self._merge()
        self._visible_counts = self.counts
        return self.k, self.v, self.slots, self.valid

    def target(self) -> torch.Tensor:
        """Entries allowed per row ``(B,)``: ``ceil(budget × tokens seen)``, at least 1."""
        t = torch.ceil(self.budget * self.n_tokens.double() - 1e-9).long()  # 1e-9: 0.1×30 is 3
        return t.clamp(min=1)

    def _merge(self) -> None:
        live = self.valid[:, 0].sum(-1)  # (B,) every head has the same live count
        excess = (live - self.target()).clamp(min=0)
        if not bool(excess.any()):
            return
        after = live - excess
        width = int(after.max())
        rows = [], [], [], [], []
        for b in range(self.k.shape[0]):
            idx = self.valid[b, 0].nonzero().squeeze(-1)
            k, v, c, s = merge_adjacent(self.k[b][:, idx], self.v[b][:, idx], self.counts[b][:, idx],
                                        self.slots[b][:, idx], int(excess[b]))
            pad = width - k.shape[1]
            H = k.shape[0]
            rows[0].append(torch.cat([k.new_zeros(H, pad, k.shape[-1]), k], dim=1))
            rows[1].append(torch.cat([v.new_zeros(H, pad, v.shape[-1]), v], dim=1))
            rows[2].append(torch.cat([c.new_ones(H, pad), c], dim=1))
            rows[3].append(torch.cat([s.new_zeros(H, pad), s], dim=1))
            rows[4].append(torch.cat([torch.zeros(H, pad, dtype=torch.bool, device=k.device),
                                      torch.ones(H, k.shape[1], dtype=torch.bool, device=k.device)], dim=1))
        self.k, self.v, self.counts, self.slots, self.valid = (torch.stack(r) for r in rows)

    def logit_bias(self):
        c = self._visible_counts
        if c is None or not bool((c > 1).any()):
            return None  # nothing merged yet: the plain (sdpa) path, bit-identical to none
        return torch.log(c.float())  # (B, H, S)

    def nbytes(self) -> int:
        return tensor_bytes(self.k, self.v, self.counts)


@dataclass(frozen=True)
class MergeAdjacent(Scheme):
    """Token merging: when the cache holds more than ``budget`` × the tokens seen so far, the
    most similar adjacent pair (cosine similarity of post-RoPE keys, per KV head) is merged into
    its count-weighted average, repeatedly, until it fits. The merged entry sits at the later
    token's slot and attention adds ``log(count)`` to its logit, so a merged entry weighs as much
    as the tokens it stands for would if they were identical. It acts at the end of prefill and
    at every decode step where the budget would be exceeded.

    Follows DMC (Nawrot et al., arXiv 2403.09636): merging a token into its predecessor by a
    weighted average, per head, keys already rotated. Deviations: DMC decides to merge with a
    neuron trained into the model and weighs by a learned importance; kvfp cannot retrain the
    model, so it merges the most similar adjacent pair (a training-free criterion, as in the
    token-merging literature) and weighs by token counts. DMC only ever merges into the last
    entry; here any adjacent pair may merge. The budget is a fraction of the tokens *seen* (DMC's
    compression ratio), not of the prompt length alone, so the cache keeps the stated fraction
    at every step and ``merge-1`` is a no-op. ``nbytes`` counts K, V and one int32 count per
    entry per head.
    """

    budget: float = 0.5

    family = "merge"
    grammar = "merge-B  (0 < B ≤ 1: entries kept as a fraction of the tokens seen)"
    pattern = r"merge-(?P<budget>\d*\.?\d+)"
    summary = "similar adjacent tokens merged (weighted average), attention biased by log(count)"

    def __post_init__(self):
        if not 0 < self.budget <= 1:
            raise ValueError("the budget must be in (0, 1]")

    @property
    def name(self) -> str:
        return f"merge-{self.budget:g}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="merging", granularity=("token", "head"), strategy="dynamic", importance="none",
            compensation=(), phase="both", params={"budget": self.budget},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return MergeLayer(step, self.budget)

    @classmethod
    def from_match(cls, groups):
        return cls(budget=float(groups["budget"]))

    @classmethod
    def canonical(cls):
        return [cls(0.5)]
