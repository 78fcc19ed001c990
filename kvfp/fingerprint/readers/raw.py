"""What a format reader hands to the shared assembly: one choice of one line, tokens not yet
pinned to single ids, top-k lists not yet normalised, prompt not yet resolved."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvfp.fingerprint.readers.fields import Line
from kvfp.fingerprint.readers.tokens import Tok


@dataclass
class RawChoice:
    """One response (one choice of one line).

    Attributes
    ----------
    line : where it came from
    source : its format name
    chosen : per step, the generated token (``None``: the log gives text only)
    chosen_field : where the generated tokens sit, for messages
    token_logprobs : per step, the chosen token's logprob (``None``: not returned)
    topk : per step, ``(token, logprob)`` in file order (``None``: not returned)
    topk_field : where step ``t``'s top-k list sits, a template with ``{t}``
    topk_by_string : the top-k lists were objects keyed by token string, so ids sharing a string
        can have been merged by the server
    text : the generated text, where the log gives it
    kvfp : the line's validated ``kvfp`` object (``{}`` when absent)
    prompt_ids : the prompt when the record itself carries it (``kvfp-jsonl``)
    probe_id : the probe id the record itself names
    prompt_logprobs : ``None``, or ``(kind, value, field)`` with kind ``"aligned"`` (floats per
        position) or ``"vllm"`` (per position ``{id: logprob}``), validated but not yet aligned
    logits : ``(steps, vocab)`` float32
    meta : what else the line says (model name, finish reason, choice index…)
    """

    line: Line
    source: str
    chosen: list[Tok] | None
    chosen_field: str = ""
    token_logprobs: list[float] | None = None
    topk: list[list[tuple[Tok, float]]] | None = None
    topk_field: str = ""
    topk_by_string: bool = False
    text: str | None = None
    kvfp: dict = field(default_factory=dict)
    prompt_ids: list[int] | None = None
    probe_id: str | None = None
    prompt_logprobs: tuple[str, list, str] | None = None
    logits: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
