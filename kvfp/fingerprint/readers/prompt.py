"""The prompt a logged response answers, and the prompt's own logprobs.

An endpoint's response does not contain its prompt, so each line names it in a ``kvfp`` object:
``prompt_ids`` directly, or ``probe_id`` in a probe suite the caller passes (see
``docs/log-formats.md``).
"""

from __future__ import annotations

from kvfp.fingerprint.readers.fields import Line, as_dict, as_float, as_ids, as_int, as_list, as_logprob, as_str
from kvfp.fingerprint.readers.raw import RawChoice
from kvfp.probes import ProbeSuite

NO_PROMPT_HINT = "pass --probes SUITE or include kvfp.prompt_ids"
# how `kvfp query` marks prompts whose ids came from the server's side of a text prompt
SERVER_TOKENIZED = ("text-tokenized", "chat-template")


def read_kvfp_block(line: Line, rec: dict, vocab: int) -> dict:
    """The line's ``kvfp`` object, checked (``{}`` when absent)."""
    block = rec.get("kvfp")
    if block is None:
        return {}
    block = dict(as_dict(line, block, "kvfp"))
    if block.get("prompt_ids") is not None:
        block["prompt_ids"] = as_ids(line, block["prompt_ids"], "kvfp.prompt_ids", vocab)
        if not block["prompt_ids"]:
            raise line.error("kvfp.prompt_ids", "is empty")
    for key in ("probe_id", "suite_hash"):
        if block.get(key) is not None:
            as_str(line, block[key], f"kvfp.{key}")
    if block.get("echo") is not None:
        n = as_int(line, block["echo"], "kvfp.echo")
        if n < 1 or block.get("prompt_ids") is None or n != len(block["prompt_ids"]):
            raise line.error("kvfp.echo", f"{n} echoed prompt tokens, but kvfp.prompt_ids holds "
                                          f"{len(block.get('prompt_ids') or [])}: they must agree")
    return block


def resolve_prompt(raw: RawChoice, suite: ProbeSuite | None, probes: dict) -> tuple[list[int], str | None]:
    """``(prompt_ids, probe_id)`` for ``raw``: its own prompt ids, else ``kvfp.prompt_ids``, else
    ``kvfp.probe_id`` looked up in ``suite`` (``probes`` is ``suite.by_id()``)."""
    line, block = raw.line, raw.kvfp
    probe_id = block.get("probe_id") or raw.probe_id
    if suite is not None and block.get("suite_hash") not in (None, suite.hash):
        raise line.error("kvfp.suite_hash", f"{block['suite_hash'][:12]}… is not the hash of the probe suite given "
                                            f"({suite.hash[:12]}…): the log answers a different suite")
    ids = raw.prompt_ids or block.get("prompt_ids")
    if probe_id is not None and suite is not None:
        if probe_id not in probes:
            raise line.error("kvfp.probe_id", f"probe {probe_id!r} is not in the probe suite given "
                                              f"({len(probes)} probes)")
        if ids is not None and ids != probes[probe_id].ids:
            if block.get("prompt") in SERVER_TOKENIZED or block.get("echo"):
                # the probe went as text (or inside a chat template) and the server's tokens are what the
                # model saw: the log's ids stand, and the probe's planted spans do not apply to them
                return list(ids), None
            raise line.error("kvfp.prompt_ids", f"differ from the ids of probe {probe_id!r} in the suite given")
        ids = ids or list(probes[probe_id].ids)
    if ids is None:
        if probe_id is not None:
            raise line.error(None, f"no prompt: kvfp.probe_id {probe_id!r} needs the probe suite it comes from; "
                                   f"{NO_PROMPT_HINT}")
        raise line.error(None, f"no prompt: the line has neither kvfp.prompt_ids nor kvfp.probe_id (an endpoint "
                               f"response does not contain its prompt); {NO_PROMPT_HINT}")
    return list(ids), probe_id


def read_aligned_prompt_logprobs(line: Line, value, field: str) -> list[float | None]:
    """kvfp's own shape: per prompt position a logprob, ``null`` first."""
    value = as_list(line, value, field)
    if value and value[0] is not None:
        raise line.error(f"{field}[0]", "must be null (nothing predicts the first prompt token)")
    return [None] + [as_logprob(line, v, f"{field}[{i}]") for i, v in enumerate(value[1:], 1)]


def read_vllm_prompt_logprobs(line: Line, value, field: str) -> list[dict[int, float] | None]:
    """vLLM's shape: ``null`` first, then per position ``{"<id>": {"logprob": …, "rank": …,
    "decoded_token": …}}`` holding the prompt token and its top-k (a bare number is accepted for
    the inner object)."""
    value = as_list(line, value, field)
    if value and value[0] is not None:
        raise line.error(f"{field}[0]", "must be null (nothing predicts the first prompt token)")
    out: list[dict[int, float] | None] = [None]
    for pos, entry in enumerate(value[1:], 1):
        where = f"{field}[{pos}]"
        entry = as_dict(line, entry, where)
        row = {}
        for key, v in entry.items():
            try:
                tid = int(key)
            except ValueError:
                raise line.error(where, f"key {key!r} is not a token id") from None
            if isinstance(v, dict):
                if "logprob" not in v:
                    raise line.error(f"{where}[{key!r}].logprob", "missing field")
                v = v["logprob"]
            row[tid] = as_logprob(line, v, f"{where}[{key!r}].logprob")
        out.append(row)
    return out


def align_prompt_logprobs(raw: RawChoice, prompt_ids: list[int]) -> list[float | None] | None:
    """Per prompt position, the logprob of the prompt token there (``None`` at 0)."""
    if raw.prompt_logprobs is None:
        return None
    kind, value, field = raw.prompt_logprobs
    line = raw.line
    if len(value) != len(prompt_ids):
        raise line.error(field, f"has {len(value)} entries but the prompt has {len(prompt_ids)} tokens: the "
                                f"log's prompt is not the one kvfp names")
    if kind == "aligned":
        return list(value)
    out: list[float | None] = [None]
    for pos in range(1, len(prompt_ids)):
        row, tid = value[pos], prompt_ids[pos]
        if tid not in row:
            raise line.error(f"{field}[{pos}]", f"has no entry for prompt token {tid} at position {pos} (ids "
                                                f"{sorted(row)[:5]}…): the log's prompt is not the one kvfp names")
        out.append(as_float(line, row[tid], f"{field}[{pos}]"))
    return out
