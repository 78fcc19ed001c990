"""``fastgen[-tT]``: a per-head cache policy chosen from the prompt's attention (FastGen,
arXiv 2310.01801)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvfp.compressors.eviction.base import NUM, EvictionLayer, check_fraction, fmt
from kvfp.compressors.eviction.scores import budget_tokens, per_kv_head, topk_mask
from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme

SPECIAL, FREQUENT, LOCAL = 1, 0.3, 0.3  # special tokens kept; r_f and r_l, fractions of the prompt
POLICIES = ("special", "special+frequent", "special+frequent+local", "full")  # cheapest first


def policy_recovery(probs: torch.Tensor, n_kv: int, special: torch.Tensor, frequent: torch.Tensor,
                    local: int) -> torch.Tensor:
    """Attention mass each candidate policy keeps, per KV head: ``(B, Hkv, len(POLICIES))``.

    ``probs`` ``(B, H, L, L)`` is the prompt's attention (query ``i`` is key ``i``); ``special``
    and ``frequent`` ``(B, Hkv, L)`` flag the keys those policies keep (disjoint); the local
    policy keeps, for query ``i``, the keys ``j > i - local``. Recovery is the mass on kept keys,
    averaged over the prompt's queries and the query heads of each KV head (each row of
    ``probs`` sums to 1, so ``full`` recovers 1).
    """
    L = probs.shape[-1]
    p = per_kv_head(probs.float(), n_kv, "mean")  # (B, Hkv, L, L)
    i = torch.arange(L, device=probs.device)
    near = (i[None, :] > i[:, None] - local)  # (L, L)
    m_special = (p * special[:, :, None, :]).sum(-1)  # (B, Hkv, L)
    m_frequent = (p * frequent[:, :, None, :]).sum(-1)
    m_local = (p * (near & ~(special | frequent)[:, :, None, :])).sum(-1)
    rec = torch.stack([m_special, m_special + m_frequent, m_special + m_frequent + m_local,
                       p.sum(-1)], dim=-1)  # (B, Hkv, L, 4)
    return rec.mean(2)


class AdaptiveLayer(EvictionLayer):
    """Profiles the prompt's attention at prefill to give each KV head the cheapest policy of
    :data:`POLICIES` that recovers at least ``threshold`` of its attention, then keeps per head:

    - special: the first ``SPECIAL`` real tokens;
    - frequent: the ``floor(FREQUENT·L)`` other entries of highest accumulated attention (summed
      over queries and the group's query heads, updated every step as in H2O);
    - local: the ``floor(LOCAL·L)`` most recent entries;
    - full: everything.

    ``L`` is the prompt length, fixed at prefill. Eviction after prefill and every decode step;
    a head's count stays constant except under ``full``. ``threshold ≥ 1`` keeps everything.
    """

    wants_scores = True

    def __init__(self, step, threshold: float, make_store=None):
        super().__init__(step, make_store)
        self.threshold = threshold
        if threshold >= 1:
            self.wants_scores = False

    def clear(self):
        super().clear()
        self.policy = None  # (B, Hkv) index into POLICIES

    def observe(self, probs):
        n_kv = self.kv.keys().shape[1]
        votes = per_kv_head(self.real_queries(probs.float()).sum(-2), n_kv, "sum")  # (B, Hkv, S)
        prev = self.aligned(self.score, 0.0)
        self.score = votes if prev is None else prev + votes
        n_freq = budget_tokens(FREQUENT, self.prompt_len, minimum=0)
        n_local = budget_tokens(LOCAL, self.prompt_len, minimum=0)
        r = self.real_index(self.slots)  # (B, Hm, S)
        special = (r >= 0) & (r < SPECIAL)
        if self.policy is None:
            self.policy = self._profile(probs, n_kv, special.expand(-1, n_kv, -1), n_freq, n_local)
        local = self.slots > (self.seen - 1 - n_local).view(-1, 1, 1)
        live = self.live()
        frequent = topk_mask(self.score.masked_fill(~live | special | local, -torch.inf), n_freq)
        frequent_only = topk_mask(self.score.masked_fill(~live | special, -torch.inf), n_freq)
        pol = self.policy[:, :, None]  # (B, Hkv, 1)
        keep = torch.where(pol == 0, special,
               torch.where(pol == 1, special | frequent_only,
               torch.where(pol == 2, special | frequent | local, live)))
        self.keep_mask(keep)

    def nbytes(self):
        """Held entries, plus accumulated scores for the heads whose policy uses them."""
        heads = None if self.policy is None else (self.policy == 1) | (self.policy == 2)
        return int(round(self.entry_bytes() + self.score_bytes(heads)))

    def _profile(self, probs, n_kv, special, n_freq, n_local):
        """Choose each KV head's policy from the prompt's attention ``(B, H, L, L)``."""
        B, _, L, S = probs.shape
        if L != S:
            raise ValueError("FastGen profiles the prompt: its first forward must hold the whole prompt")
        frequent = topk_mask(self.score.masked_fill(~self.live() | special, -torch.inf), n_freq)
        policies = []
        for b in range(B):  # rows may differ in prompt length: profile each row's real square
            n = int(self.prompt_len[b])
            rec = policy_recovery(probs[b:b + 1, :, -n:, -n:], n_kv, special[b:b + 1, :, -n:],
                                  frequent[b:b + 1, :, -n:], int(n_local[b]))[0]  # (Hkv, 4)
            ok = rec >= self.threshold - 1e-6
            ok[:, -1] = True
            policies.append(ok.float().argmax(-1))  # the first (cheapest) that recovers enough
        return torch.stack(policies)


@dataclass(frozen=True)
class FastGen(Scheme):
    """FastGen-style adaptive KV cache (Ge et al., arXiv 2310.01801).

    At prefill the prompt's attention map is profiled per KV head, and each head gets the
    cheapest of the hybrid policies ``special``, ``special+frequent``,
    ``special+frequent+local``, ``full`` whose kept keys hold at least ``T`` of the attention
    mass (:func:`policy_recovery`; the paper's ``|A - softmax(QK_C)| ≤ 1 - T``). Budgets per head
    are fixed at prefill from the prompt length ``L``: 1 special token, ``floor(0.3·L)`` frequent
    and ``floor(0.3·L)`` local entries (``r_f = r_l = 0.3``); ``full`` heads keep everything.
    Eviction after prefill and at every decode step. Gene phase ``both``. ``T = 1`` keeps
    everything.

    Deviations, because a cache layer sees K/V and attention but never token ids:
    special tokens are the first real token (the BOS attention sink), and the punctuation policy
    is left out (the paper's ``C_punct`` needs the vocabulary), so the hybrid ladder is the
    paper's without its punctuation component. The paper states ``r_f``/``r_l`` against the
    current length; kvfp fixes them at prefill so each head's budget is constant. Recovery is
    averaged over all prompt queries.
    """

    threshold: float = 0.95

    family = "fastgen"
    grammar = "fastgen[-tT]  (T in (0, 1]: attention mass each head's policy must recover)"
    pattern = rf"fastgen(?:-t(?P<threshold>{NUM}))?"
    summary = "per-head policy chosen from the prompt's attention profile"
    role = "eviction"

    def __post_init__(self):
        check_fraction("threshold", self.threshold)

    @property
    def name(self) -> str:
        return "fastgen" if self.threshold == 0.95 else f"fastgen-t{fmt(self.threshold)}"

    @property
    def gene(self) -> Gene:
        return Gene(
            algorithm="eviction", granularity=("head", "token"), strategy="dynamic",
            importance="attention_cumulative", compensation=("sinks_kept",), phase="both",
            params={"threshold": self.threshold, "frequent": FREQUENT, "local": LOCAL, "special": SPECIAL},
        )

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        return AdaptiveLayer(step, self.threshold, make_store)

    @classmethod
    def from_match(cls, groups):
        t = groups["threshold"]
        return cls() if t is None else cls(threshold=float(t))
