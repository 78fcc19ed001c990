"""Teacher-forced replay that computes each prompt's prefill once.

A replay is a prefill over the prompt followed by one decode step per forced token. On a 512-token
prompt the prefill is most of the cost, and a fingerprinting run replays the same few prompts
many times: every observation of a probe shares its prompt, and every scheme that leaves the
prefill untouched (its gene's ``phase`` is ``"decode"``: the prompt attends over its own K/V as
projected, and only what later steps read back is compressed) computes exactly the prefill of
``none``. So:

* rows of one prompt length replay as one batch, and each *distinct* prompt is prefilled once;
  its K/V (and, for schemes that watch attention, its attention probabilities) are handed to every
  row's cache layer through the layer's own ``update``/``observe``, the calls a batched prefill
  would have made, so each row's cache is what its own prefill would have built;
* for schemes whose prefill is untouched, the K/V the prefill hands each layer, its last logits
  and its prompt logprobs are computed once under ``none`` and kept (:class:`PrefillStore`), then
  handed to every such scheme without running the model.

Numbers change only by float rounding of a different batch shape (the prefill runs over the
distinct prompts instead of every row); ``tests/test_shared_replay.py`` compares this path
with :func:`kvfp.runner.replay` on every catalogue scheme.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from kvfp.compressors import parse_scheme
from kvfp.compressors.scheme import Scheme
from kvfp.runner.attach import attach
from kvfp.runner.decode import _FinalHidden, _prompt_logprobs

_NONE = parse_scheme("none")


def prefill_untouched(scheme: Scheme) -> bool:
    """Whether ``scheme``'s prefill is ``none``'s: nothing compressed before decoding starts."""
    return scheme.name == "none" or scheme.gene.phase == "decode"


@dataclass
class Prefill:
    """One prompt's prefill under ``none``: what each layer's ``update`` received, and its outputs."""

    keys: list[torch.Tensor]  # per layer (1, Hkv, L, D)
    values: list[torch.Tensor]
    logits: torch.Tensor  # (V,) float32 at the last prompt position
    prompt_lp: torch.Tensor | None  # (L,) float32, NaN at 0

    def nbytes(self) -> int:
        t = [*self.keys, *self.values, self.logits] + ([self.prompt_lp] if self.prompt_lp is not None else [])
        return sum(x.numel() * x.element_size() for x in t)


class PrefillStore:
    """Prefills of ``none`` by prompt, least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, Prefill] = OrderedDict()
        self._bytes = 0
        self.computed = 0  # prefills run (for benchmarks and tests)

    def get(self, prompt: tuple) -> Prefill | None:
        got = self._items.get(prompt)
        if got is not None:
            self._items.move_to_end(prompt)
        return got

    def put(self, prompt: tuple, rec: Prefill) -> None:
        old = self._items.pop(prompt, None)
        if old is not None:
            self._bytes -= old.nbytes()
        self._items[prompt] = rec
        self._bytes += rec.nbytes()
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes()


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Row ``idx[r]`` of ``x`` for every ``r``: a view when every row is the one prompt's (attention
    probabilities are ``rows × heads × L²``; copying them per row would cost more than the prefill)."""
    if x.shape[0] == 1:
        return x.expand(len(idx), *x.shape[1:])
    return x.index_select(0, idx)


def _tee(layer, target, idx: torch.Tensor) -> None:
    """Make ``layer`` (one of the prefill's distinct-prompt rows) also hand what it receives to
    ``target`` (every row), row ``r`` of ``target`` getting row ``idx[r]``."""
    update, observe = layer.update, layer.observe

    def tee_update(k, v, *args, **kwargs):
        target.update(_rows(k, idx), _rows(v, idx))
        return update(k, v, *args, **kwargs)

    def tee_observe(probs):
        observe(probs)
        target.observe(_rows(probs, idx))

    layer.update, layer.observe = tee_update, tee_observe


def _record(layer, keys: list, values: list) -> None:
    update = layer.update

    def record_update(k, v, *args, **kwargs):
        keys.append(k)
        values.append(v)
        return update(k, v, *args, **kwargs)

    layer.update = record_update


@torch.inference_mode()
def _prefill(model, attached, ids: torch.Tensor, want_lp: bool, on_layers) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One unpadded prefill of ``ids`` ``(U, L)``; ``on_layers(cache)`` wires the layers first.
    Returns last-position logits ``(U, V)`` and prompt logprobs ``(U, L)`` (or None)."""
    U, L = ids.shape
    mask = torch.ones((U, L), dtype=torch.long, device=ids.device)
    pos = torch.arange(L, device=ids.device).expand(U, L)
    cache = attached.new_cache()
    cache.begin_step(mask, pos)
    on_layers(cache)
    catch = _FinalHidden(model) if want_lp else None
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, kvfp_cache=cache,
                    use_cache=True, logits_to_keep=1)
    finally:
        if catch is not None:
            catch.remove()
    lp = _prompt_logprobs(model, catch.hidden, ids) if catch is not None else None
    return out.logits[:, -1].float(), lp


def _distinct(prompts: list[tuple]) -> tuple[list[tuple], list[int]]:
    first: dict[tuple, int] = {}
    idx = []
    for p in prompts:
        idx.append(first.setdefault(p, len(first)))
    return list(first), idx


def fill_prefills(model, prompts: list[tuple], store: PrefillStore, want_lp: bool) -> list[Prefill]:
    """``none``'s prefill of each of ``prompts`` (one length), computed for those the store lacks."""
    have = {p: store.get(p) for p in dict.fromkeys(prompts)}
    todo = [p for p, r in have.items() if r is None or (want_lp and r.prompt_lp is None)]
    if not todo:
        return [have[p] for p in prompts]
    device = model.device
    with attach(model, _NONE) as attached:
        keys: list = []
        values: list = []

        def wire(cache):
            for layer in cache.layers:
                _record(layer, keys, values)

        ids = torch.tensor(todo, dtype=torch.long, device=device)
        logits, lp = _prefill(model, attached, ids, want_lp, wire)
    store.computed += len(todo)
    for u, p in enumerate(todo):
        have[p] = Prefill(keys=[k[u:u + 1].clone() for k in keys], values=[v[u:u + 1].clone() for v in values],
                          logits=logits[u].clone(), prompt_lp=None if lp is None else lp[u].clone())
        store.put(p, have[p])
    return [have[p] for p in prompts]


@torch.inference_mode()
def replay_shared(model, scheme: Scheme, prompts: list[list[int]], continuations: list[list[int]], *,
                  store: PrefillStore | None = None, prompt_logprobs: bool = True
                  ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Teacher-force each continuation after its prompt, every prompt of one length, as one batch.

    Returns per row ``(logits (steps, V) float32, prompt logprobs (L,) float32 with NaN at 0, or None)``:
    what :func:`kvfp.runner.replay` records as ``Trace.logits``/``Trace.prompt_logprobs``.
    """
    if not prompts or len(prompts) != len(continuations):
        raise ValueError("replay_shared needs one continuation per prompt")
    L = len(prompts[0])
    if L == 0 or any(len(p) != L for p in prompts) or any(len(c) == 0 for c in continuations):
        raise ValueError("replay_shared needs non-empty prompts of one length and non-empty continuations")
    device = model.device
    keyed = [tuple(map(int, p)) for p in prompts]
    distinct, row_of = _distinct(keyed)
    idx = torch.tensor(row_of, dtype=torch.long, device=device)
    B, n = len(prompts), max(len(c) for c in continuations)
    shared = store is not None and prefill_untouched(scheme)
    recs = fill_prefills(model, distinct, store, prompt_logprobs) if shared else None
    with attach(model, scheme) as attached:
        cache = attached.new_cache()  # every row's
        # a layer that watches attention must see the prefill's, which a kept prefill does not hold
        shared = shared and not any(layer.wants_scores for layer in cache.layers)
        mask = torch.ones((B, L), dtype=torch.long, device=device)
        all_pos = torch.arange(L, device=device).expand(B, L)
        cache.begin_step(mask, all_pos)
        if shared:
            for i, layer in enumerate(cache.layers):
                layer.update(torch.cat([r.keys[i] for r in recs]).index_select(0, idx),
                             torch.cat([r.values[i] for r in recs]).index_select(0, idx))
            first = torch.stack([r.logits for r in recs]).index_select(0, idx)
            plp = torch.stack([r.prompt_lp for r in recs]).index_select(0, idx) if prompt_logprobs else None
        else:
            def wire(prefill_cache):
                for layer, target in zip(prefill_cache.layers, cache.layers):
                    _tee(layer, target, idx)

            ids = torch.tensor(distinct, dtype=torch.long, device=device)
            first, plp = _prefill(model, attached, ids, prompt_logprobs, wire)
            first = first.index_select(0, idx)
            plp = plp.index_select(0, idx) if plp is not None else None

        # a shorter row is padded at its end: later steps cannot change earlier ones
        forced = torch.tensor([c + [c[-1]] * (n - len(c)) for c in continuations], dtype=torch.long, device=device)
        steps = [first]
        pos = all_pos[:, -1:]
        for t in range(1, n):
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=-1)
            pos = pos + 1
            all_pos = torch.cat([all_pos, pos], dim=-1)
            cache.begin_step(mask, all_pos)
            out = model(input_ids=forced[:, t - 1:t], attention_mask=mask, position_ids=pos, cache=cache,
                        kvfp_cache=cache, use_cache=True, logits_to_keep=1)
            steps.append(out.logits[:, -1].float())
    logits = torch.stack(steps, dim=1).cpu().numpy()  # (B, n, V)
    plp_np = plp.cpu().numpy() if plp is not None else None
    return [(np.ascontiguousarray(logits[r, :len(c)], dtype=np.float32),
             None if plp_np is None else plp_np[r].astype(np.float32))
            for r, c in enumerate(continuations)]


__all__ = ["Prefill", "PrefillStore", "fill_prefills", "prefill_untouched", "replay_shared"]
