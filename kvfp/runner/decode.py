"""Greedy generation and teacher-forced replay through the decode path."""

from __future__ import annotations

import numpy as np
import torch

from kvfp.compressors.scheme import Scheme
from kvfp.runner.attach import attach
from kvfp.runner.trace import Trace


def _pad_id(model) -> int:
    for tid in (model.config.pad_token_id, model.config.eos_token_id, 0):
        if isinstance(tid, int):
            return tid
    return 0


class _FinalHidden:
    """Catches the decoder's final hidden states ``(B, L, H)`` during one forward.

    The model's own head only sees the last position (``logits_to_keep=1``); prompt logprobs need
    every position, which :func:`_prompt_logprobs` scores in chunks from these states.
    """

    def __init__(self, model):
        self.hidden = None
        self._handle = model.get_decoder().register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        self.hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def remove(self):
        self._handle.remove()


def _prompt_logprobs(model, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each prompt token given the ones before it, as the prefill scored it.

    Parameters
    ----------
    hidden : ``(B, L, H)`` final hidden states of the prefill
    ids : ``(B, L)`` the (left-padded) prompt ids

    Returns
    -------
    ``(B, L)`` float32; column ``j >= 1`` holds ``log p(ids[:, j] | ids[:, :j])``, column 0 is NaN.
    Full ``(L, V)`` logits are never held at once: positions go through the head in chunks.
    """
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    B, L = ids.shape
    out = torch.full((B, L), float("nan"), dtype=torch.float32, device=ids.device)
    chunk = max(1, (1 << 24) // (B * head.weight.shape[0]))  # about 64 MiB of float32 logits at a time
    for s in range(0, L - 1, chunk):
        e = min(L - 1, s + chunk)
        logits = head(hidden[:, s:e]).float()  # (B, c, V)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        nxt = ids[:, s + 1:e + 1].unsqueeze(-1)  # (B, c, 1)
        out[:, s + 1:e + 1] = (logits.gather(-1, nxt) - torch.logsumexp(logits, dim=-1, keepdim=True)).squeeze(-1)
    return out


@torch.inference_mode()
def _run_batch(attached, prompts, n_steps, forced, topk, keep_logits, want_prompt_lp=False) -> list[Trace]:
    model = attached.model
    device = model.device
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), _pad_id(model), dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # explicit RoPE positions: padding-aware
    cache = attached.new_cache()

    step_logits, prompt_lp = [], None
    inputs, pos, all_pos = ids, positions, positions
    for t in range(n_steps):
        cache.begin_step(mask, all_pos)
        catch = _FinalHidden(model) if t == 0 and want_prompt_lp else None
        try:
            out = model(input_ids=inputs, attention_mask=mask, position_ids=pos, cache=cache,
                        kvfp_cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            if catch is not None:
                catch.remove()
        if catch is not None:
            prompt_lp = _prompt_logprobs(model, catch.hidden, ids).cpu()  # (B, L)
            del catch
        logits = out.logits[:, -1].float()  # (B, V)
        step_logits.append(logits)
        if t == n_steps - 1:
            break
        nxt = forced[:, t] if forced is not None else logits.argmax(-1)
        inputs = nxt.view(B, 1).to(device)
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=-1)
        pos = pos[:, -1:] + 1
        all_pos = torch.cat([all_pos, pos], dim=-1)

    logits = torch.stack(step_logits, dim=1)  # (B, steps, V)
    chosen = forced if forced is not None else logits.argmax(-1).cpu()
    logprobs = torch.log_softmax(logits, dim=-1)
    k = min(topk, logits.shape[-1])
    top_lp, top_ids = logprobs.topk(k, dim=-1)
    chosen_lp = logprobs.gather(-1, chosen.to(device).unsqueeze(-1)).squeeze(-1)
    traces = []
    for i, p in enumerate(prompts):
        traces.append(Trace(
            prompt_ids=list(p),
            output_ids=chosen[i].tolist(),
            token_logprobs=chosen_lp[i].cpu().tolist(),
            topk_ids=top_ids[i].cpu().tolist(),
            topk_logprobs=top_lp[i].cpu().tolist(),
            mode="generate" if forced is None else "replay",
            logits=logits[i].cpu().numpy().astype(np.float32) if keep_logits else None,
            prompt_logprobs=None if prompt_lp is None else [None] + prompt_lp[i, L - len(p) + 1:].tolist(),
            meta=_meta(attached, B, cache),
        ))
    return traces


def _meta(attached, batch_size: int, cache) -> dict:
    model = attached.model
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    slots = cache.layers[0].seen * batch_size  # padding slots included: exact for batch size 1
    return {
        "memory": {
            "bytes_per_token_layer": cache.nbytes() / (slots * n_layers),
            "uncompressed_bytes_per_token_layer": 2 * cfg.num_key_value_heads * head_dim * model.dtype.itemsize,
        },
        "scheme": attached.scheme.name,
        "gene": attached.scheme.gene.to_dict(),
        "nuisance": {
            "dtype": str(model.dtype).removeprefix("torch."),
            "attn": attached.base_attn,
            "batch_size": batch_size,
            "padding": "left",
            "device": model.device.type,
        },
    }


def _check(prompts):
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")


def generate(model, scheme: Scheme, prompts: list[list[int]], new_tokens: int, *, topk: int = 20,
             logits: bool = False, batch_size: int = 1, prompt_logprobs: bool = True) -> list[Trace]:
    """Greedy generation of exactly ``new_tokens`` tokens per prompt (no stop at EOS: a trace's
    length is part of the probe design, not the model's choice).

    With ``prompt_logprobs`` each trace also holds the logprob of every prompt token as the
    prefill scored it under the scheme (what the ``prompt`` tier sees); it costs one pass of the
    output head over the prompt, which plain generation skips.
    """
    _check(prompts)
    if new_tokens < 1:
        raise ValueError("new_tokens must be at least 1")
    traces = []
    with attach(model, scheme) as attached:
        for s in range(0, len(prompts), batch_size):
            traces += _run_batch(attached, prompts[s:s + batch_size], new_tokens, None, topk, logits,
                                 prompt_logprobs)
    return traces


def replay(model, scheme: Scheme, prompts: list[list[int]], continuations: list[list[int]], *,
           topk: int = 20, logits: bool = False, batch_size: int = 1, prompt_logprobs: bool = True) -> list[Trace]:
    """Teacher-force each continuation one token at a time, exactly as generation runs, and
    record what the model predicted at every step."""
    _check(prompts)
    if len(prompts) != len(continuations) or any(len(c) == 0 for c in continuations):
        raise ValueError("replay needs one non-empty continuation per prompt")
    traces = []
    with attach(model, scheme) as attached:
        for s in range(0, len(prompts), batch_size):
            conts = continuations[s:s + batch_size]
            n = max(len(c) for c in conts)
            # a shorter row is padded at its end: later steps cannot change earlier ones
            forced = torch.tensor([c + [c[-1]] * (n - len(c)) for c in conts], dtype=torch.long)
            batch = _run_batch(attached, prompts[s:s + batch_size], n, forced, topk, logits, prompt_logprobs)
            for tr, c in zip(batch, conts):
                traces.append(_truncate(tr, len(c)))
    return traces


def _truncate(tr: Trace, n: int) -> Trace:
    if tr.steps == n:
        return tr
    tr.output_ids, tr.token_logprobs = tr.output_ids[:n], tr.token_logprobs[:n]
    tr.topk_ids, tr.topk_logprobs = tr.topk_ids[:n], tr.topk_logprobs[:n]
    if tr.logits is not None:
        tr.logits = tr.logits[:n]
    return tr
