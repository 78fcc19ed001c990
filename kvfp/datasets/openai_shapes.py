"""The logprob parts of OpenAI-shaped responses, built from token ids (``docs/log-formats.md``).

``kvfp export`` writes collected traces in these shapes and ``kvfp serve`` answers requests in
them, so both speak exactly what the readers read. Token strings are each token decoded alone;
``as_ids`` spells every token as vLLM's ``return_tokens_as_token_ids`` does (``"token_id:523"``),
which no two ids share.
"""

from __future__ import annotations

from kvfp.datasets.tokens import TokenText


def token_string(tt: TokenText, token_id: int, as_ids: bool = False) -> str:
    return f"token_id:{token_id}" if as_ids else tt.text(token_id)


def completions_logprobs(tt: TokenText, ids: list[int], token_lps: list[float | None],
                         topk_ids: list[list[int] | None], topk_lps: list[list[float] | None], *,
                         as_ids: bool = False) -> dict:
    """``choices[].logprobs`` of ``/v1/completions``: top-k objects keyed by token string, so ids
    that decode alike collide and the likelier one stays (as in every such server)."""
    tokens = [token_string(tt, i, as_ids) for i in ids]
    top: list[dict[str, float] | None] = []
    for row_ids, row_lps in zip(topk_ids, topk_lps):
        if row_ids is None:
            top.append(None)
            continue
        row: dict[str, float] = {}
        for i, lp in zip(row_ids, row_lps):
            row.setdefault(token_string(tt, i, as_ids), lp)
        top.append(row)
    offsets, at = [], 0
    for s in tokens:
        offsets.append(at)
        at += len(s)
    return {"tokens": tokens, "token_logprobs": list(token_lps), "top_logprobs": top, "text_offset": offsets}


def chat_content(tt: TokenText, ids: list[int], token_lps: list[float], topk_ids: list[list[int]],
                 topk_lps: list[list[float]], *, as_ids: bool = False) -> list[dict]:
    """``choices[].logprobs.content`` of ``/v1/chat/completions``, with each token's exact bytes."""
    def entry(i: int, lp: float) -> dict:
        return {"token": token_string(tt, i, as_ids), "logprob": lp, "bytes": tt.bytes(i)}

    return [{**entry(i, lp), "top_logprobs": [entry(j, lq) for j, lq in zip(r_ids, r_lps)]}
            for i, lp, r_ids, r_lps in zip(ids, token_lps, topk_ids, topk_lps)]


def vllm_prompt_logprobs(tt: TokenText, prompt_ids: list[int], prompt_lps: list[float | None]) -> list:
    """vLLM's ``prompt_logprobs``: ``null`` for the first token, then per prompt token an object keyed
    by its id holding its own entry."""
    out: list = [None]
    for tid, lp in zip(prompt_ids[1:], prompt_lps[1:]):
        out.append({str(tid): {"logprob": lp, "decoded_token": tt.text(tid)}})
    return out
