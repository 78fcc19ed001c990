"""OpenAI ``/v1/completions`` responses (``logprobs=k``), with vLLM's ``prompt_logprobs``.

Tokens come as strings and the top-k as objects keyed by string, so ids that decode alike are
ambiguous here (and collide in the top-k objects); the choice's ``text`` is what pins the generated
tokens down (:mod:`kvfp.fingerprint.readers.resolve`).
"""

from __future__ import annotations

from kvfp.fingerprint.readers.fields import Line, as_dict, as_int, as_list, as_logprob, as_str, req
from kvfp.fingerprint.readers.prompt import read_kvfp_block, read_vllm_prompt_logprobs
from kvfp.fingerprint.readers.raw import RawChoice
from kvfp.fingerprint.readers.tokens import Mapper, TokenTable

NAME = "openai-completions"


def block_and_choices(rec: dict, line: Line, table: TokenTable) -> tuple[dict, list]:
    """The line's checked ``kvfp`` object and its non-empty ``choices`` list (both OpenAI shapes)."""
    block = read_kvfp_block(line, rec, table.size)
    choices = as_list(line, req(line, rec, "choices", "choices"), "choices")
    if not choices:
        raise line.error("choices", "is empty")
    return block, choices


def read(rec: dict, line: Line, table: TokenTable) -> list[RawChoice]:
    """One :class:`RawChoice` per element of ``choices``."""
    block, choices = block_and_choices(rec, line, table)
    return [_choice(rec, as_dict(line, ch, f"choices[{c}]"), c, len(choices), line, table, block)
            for c, ch in enumerate(choices)]


def _choice(rec: dict, ch: dict, c: int, n: int, line: Line, table: TokenTable, block: dict) -> RawChoice:
    f = f"choices[{c}]"
    text = as_str(line, ch["text"], f"{f}.text") if ch.get("text") is not None else None
    meta = response_meta(rec, ch, c, n, line)
    # vLLM puts it inside the choice for completions; the top level is accepted too
    plp, plp_field = (ch["prompt_logprobs"], f"{f}.prompt_logprobs") if ch.get("prompt_logprobs") is not None \
        else (rec.get("prompt_logprobs"), "prompt_logprobs")
    prompt_lp = None if plp is None else ("vllm", read_vllm_prompt_logprobs(line, plp, plp_field), plp_field)
    raw = RawChoice(line=line, source=NAME, chosen=None, text=text, kvfp=block, prompt_logprobs=prompt_lp,
                    meta=meta)
    if ch.get("logprobs") is None:
        if text is None:
            raise line.error(f"{f}.text", "missing field (the choice has neither logprobs nor text)")
        return raw
    lp = as_dict(line, ch["logprobs"], f"{f}.logprobs")
    mapper = Mapper(table, line)
    tf = f"{f}.logprobs.tokens"
    tokens = as_list(line, req(line, lp, "tokens", tf), tf)
    echo = block.get("echo") or 0  # with echo the lists begin with the prompt's own tokens
    if echo:
        _echoed_prompt(raw, lp, tokens, echo, block["prompt_ids"], mapper, f)
    raw.chosen = [mapper.string(as_str(line, s, f"{tf}[{t}]"), f"{tf}[{t}]") for t, s in enumerate(tokens)
                  if t >= echo]
    raw.chosen_field = tf
    if lp.get("token_logprobs") is not None:
        lf = f"{f}.logprobs.token_logprobs"
        values = _same_length(line, lp["token_logprobs"], lf, len(tokens), tf)
        raw.token_logprobs = [as_logprob(line, v, f"{lf}[{t}]") for t, v in enumerate(values) if t >= echo]
    if lp.get("top_logprobs") is not None:
        kf = f"{f}.logprobs.top_logprobs"
        rows = _same_length(line, lp["top_logprobs"], kf, len(tokens), tf)
        raw.topk, raw.topk_field, raw.topk_by_string = [], kf + "[{t}]", True
        for t, row in enumerate(rows):
            if t < echo:
                continue
            row = as_dict(line, row, f"{kf}[{t}]")
            pairs = getattr(row, "pairs", None) or list(row.items())  # duplicate keys survive in .pairs
            raw.topk.append([(mapper.string(key, f"{kf}[{t}][{key!r}]"), as_logprob(line, v, f"{kf}[{t}][{key!r}]"))
                             for key, v in pairs])
    mapper.check()
    return raw


def _echoed_prompt(raw: RawChoice, lp: dict, tokens: list, n: int, prompt_ids: list[int], mapper: Mapper,
                   f: str) -> None:
    """Split off the ``n`` echoed prompt tokens (``kvfp.echo``): they must name ``prompt_ids``; their
    logprobs are the prompt tier's evidence and the generated text starts after them."""
    line = raw.line
    tf = f"{f}.logprobs.tokens"
    if len(tokens) < n:
        raise line.error(tf, f"has {len(tokens)} entries, fewer than the {n} echoed prompt tokens kvfp.echo names")
    for t in range(n):
        tok = mapper.string(as_str(line, tokens[t], f"{tf}[{t}]"), f"{tf}[{t}]")
        if tok.ids and prompt_ids[t] not in tok.ids:
            raise line.error(f"{tf}[{t}]", f"echoed prompt token {tok.shown} is not id {prompt_ids[t]} of "
                                           f"kvfp.prompt_ids: the log's prompt is not the one kvfp names")
    if lp.get("token_logprobs") is not None:
        lf = f"{f}.logprobs.token_logprobs"
        values = _same_length(line, lp["token_logprobs"], lf, len(tokens), tf)[:n]
        raw.prompt_logprobs = ("aligned", [None] + [as_logprob(line, v, f"{lf}[{t}]") for t, v in
                                                    enumerate(values[1:], 1)], lf)
    offsets = lp.get("text_offset")
    if raw.text is not None:
        cut = None
        if isinstance(offsets, list) and len(offsets) == len(tokens) and len(tokens) > n:
            cut = as_int(line, offsets[n], f"{f}.logprobs.text_offset[{n}]")
        raw.text = raw.text[cut:] if cut is not None and 0 <= cut <= len(raw.text) else None


def _same_length(line: Line, value, field: str, n: int, other: str) -> list:
    value = as_list(line, value, field)
    if len(value) != n:
        raise line.error(field, f"has {len(value)} entries but {other} has {n}")
    return value


def response_meta(rec: dict, ch: dict, c: int, n: int, line: Line) -> dict:
    """What an OpenAI-shaped response says about itself, for ``Observation.meta``."""
    meta = {"line": line.n, "choice": ch.get("index", c), "n_choices": n, "model": rec.get("model"),
            "response_id": rec.get("id"), "finish_reason": ch.get("finish_reason")}
    return {k: v for k, v in meta.items() if v is not None}
