"""OpenAI ``/v1/chat/completions`` responses (``logprobs=true, top_logprobs=k``), with vLLM's
``prompt_logprobs`` (top level for chat).

Each token carries its exact UTF-8 ``bytes`` where the server sends them, which identify a
byte-level BPE token without ambiguity; the token string is the fallback.
"""

from __future__ import annotations

from kvfp.fingerprint.readers.fields import Line, as_dict, as_int, as_list, as_logprob, as_str, req
from kvfp.fingerprint.readers.openai_completions import block_and_choices, response_meta
from kvfp.fingerprint.readers.prompt import read_vllm_prompt_logprobs
from kvfp.fingerprint.readers.raw import RawChoice
from kvfp.fingerprint.readers.tokens import Mapper, TokenTable

NAME = "openai-chat"


def read(rec: dict, line: Line, table: TokenTable) -> list[RawChoice]:
    """One :class:`RawChoice` per element of ``choices``; ``prompt_logprobs`` is shared by all."""
    block, choices = block_and_choices(rec, line, table)
    prompt_lp = None
    if rec.get("prompt_logprobs") is not None:
        prompt_lp = ("vllm", read_vllm_prompt_logprobs(line, rec["prompt_logprobs"], "prompt_logprobs"),
                     "prompt_logprobs")
    return [_choice(rec, as_dict(line, ch, f"choices[{c}]"), c, len(choices), line, table, block, prompt_lp)
            for c, ch in enumerate(choices)]


def _choice(rec, ch, c, n, line: Line, table: TokenTable, block: dict, prompt_lp) -> RawChoice:
    f = f"choices[{c}]"
    message = as_dict(line, req(line, ch, "message", f"{f}.message"), f"{f}.message")
    content = message.get("content")
    text = as_str(line, content, f"{f}.message.content") if content is not None else None
    raw = RawChoice(line=line, source=NAME, chosen=None, text=text, kvfp=block, prompt_logprobs=prompt_lp,
                    meta=response_meta(rec, ch, c, n, line))
    lp = ch.get("logprobs")
    if lp is None or as_dict(line, lp, f"{f}.logprobs").get("content") is None:
        if text is None:
            raise line.error(f"{f}.message.content", "missing (the choice has neither logprobs nor content)")
        return raw
    cf = f"{f}.logprobs.content"
    entries = as_list(line, lp["content"], cf)
    mapper = Mapper(table, line)
    chosen, logprobs, topk = [], [], []
    for t, e in enumerate(entries):
        ef = f"{cf}[{t}]"
        e = as_dict(line, e, ef)
        tok, lp_ = _token(e, ef, line, mapper)
        chosen.append(tok)
        logprobs.append(lp_)
        row = []
        if e.get("top_logprobs") is not None:
            for j, alt in enumerate(as_list(line, e["top_logprobs"], f"{ef}.top_logprobs")):
                af = f"{ef}.top_logprobs[{j}]"
                row.append(_token(as_dict(line, alt, af), af, line, mapper))
        topk.append(row)
    mapper.check()
    raw.chosen, raw.chosen_field, raw.token_logprobs = chosen, cf, logprobs
    if any(topk):  # top_logprobs=0 gives empty lists everywhere: no top-k tier
        raw.topk, raw.topk_field = topk, cf + "[{t}].top_logprobs"
    return raw


def _token(e: dict, field: str, line: Line, mapper: Mapper):
    """``(Tok, logprob)`` of one ``{token, logprob, bytes}`` entry."""
    s = as_str(line, req(line, e, "token", f"{field}.token"), f"{field}.token")
    lp = as_logprob(line, req(line, e, "logprob", f"{field}.logprob"), f"{field}.logprob")
    if e.get("bytes") is None:
        return mapper.string(s, f"{field}.token"), lp
    bf = f"{field}.bytes"
    values = [as_int(line, b, f"{bf}[{i}]") for i, b in enumerate(as_list(line, e["bytes"], bf))]
    if any(not 0 <= b < 256 for b in values):
        raise line.error(bf, f"{values} are not all bytes (0-255)")
    return mapper.bytes(bytes(values), bf), lp
