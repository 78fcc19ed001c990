"""From the choices a format reader found to observations: pin tokens to ids, normalise the
top-k lists over the whole file, resolve prompts.

Top-k normalisation needs the whole file: whether a list is truncated, or carries the chosen
token on top of the top-k (OpenAI completions return up to ``k + 1`` entries), shows only
against the other lists of the same log.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.fingerprint.observation import Observation
from kvfp.fingerprint.readers.prompt import align_prompt_logprobs, resolve_prompt
from kvfp.fingerprint.readers.raw import RawChoice
from kvfp.fingerprint.readers.resolve import resolve_chosen
from kvfp.fingerprint.readers.tokens import TokenTable
from kvfp.probes import ProbeSuite

# the chosen token's logprob and its own top-k entry come from one computation, up to rounding
SAME_LOGPROB = 1e-5
# beyond this the two disagree: float32 rounding, even through a second softmax, stays far below it
CONSISTENT_LOGPROB = 1e-3


@dataclass
class _Staged:
    raw: RawChoice
    prompt_ids: list[int]
    probe_id: str | None
    output_ids: list[int]
    topk: list[list[tuple[int, float]]] | None
    merged: set[int]  # steps whose list may have lost entries to a string collision
    notes: list[str]


def assemble(raws: list[RawChoice], table: TokenTable, tokenizer, suite: ProbeSuite | None,
             max_positions: int | None = None) -> list[Observation]:
    """One observation per choice, in file order; ``max_positions`` (the model's context length)
    refuses a response longer than the model can hold."""
    probes = suite.by_id() if suite is not None else {}
    staged = [_stage(raw, table, tokenizer, suite, probes, max_positions) for raw in raws]
    k, plus_one = _infer_k(staged)
    return [_observation(s, k, plus_one) for s in staged]


def _label(raw: RawChoice) -> str:
    choice = raw.meta.get("choice")
    return f"line {raw.line.n}" + (f", choice {choice}" if choice is not None and raw.meta.get("n_choices", 1) > 1
                                   else "")


def _stage(raw: RawChoice, table: TokenTable, tokenizer, suite, probes, max_positions: int | None) -> _Staged:
    prompt_ids, probe_id = resolve_prompt(raw, suite, probes)
    bad = next((i for i in prompt_ids if i >= table.size), None)  # a log's own ids are checked as read; a suite's not
    if bad is not None:
        raise raw.line.error("kvfp.probe_id", f"probe {probe_id!r} of the suite given holds token id {bad}, outside "
                                              f"the tokenizer's {table.size} ids (a suite for another tokenizer)")
    notes: list[str] = []
    named = raw.kvfp.get("probe_id")
    if suite is not None and named is not None and probe_id is None:
        notes.append(f"{_label(raw)}: probe {named!r} reached the model as other token ids than the probe's (sent as "
                     f"text or in a chat template); its planted spans are not used for it")
    if raw.chosen is None:
        output_ids = list(tokenizer(raw.text, add_special_tokens=False)["input_ids"])
        notes.append(f"{_label(raw)}: output ids are the tokenizer's segmentation of the generated text, a guess "
                     f"at the tokens the endpoint produced")
    else:
        res = resolve_chosen([t.ids for t in raw.chosen], raw.text, table)
        output_ids = res.ids
        notes += _chosen_notes(raw, res)
    total = len(prompt_ids) + len(output_ids)
    if max_positions is not None and total > max_positions:
        # checked before any replay: the model cannot have produced it, and replaying would run past
        # its positions (and take minutes) for nothing
        raise raw.line.error(None, f"prompt ({len(prompt_ids)} tokens) and output ({len(output_ids)} tokens) make "
                                   f"{total}, more than the model's {max_positions} positions: this model cannot "
                                   f"have produced this response")
    topk, merged = (None, set()) if raw.topk is None else _map_topk(raw, output_ids, notes)
    return _Staged(raw, prompt_ids, probe_id, output_ids, topk, merged, notes)


def _steps(steps: list[int], limit: int = 8) -> str:
    """``"step 4"`` / ``"steps 4, 5, 9"``, shortened past ``limit``."""
    shown = ", ".join(map(str, steps[:limit]))
    return f"step{'s' if len(steps) > 1 else ''} {shown}" + (f"… ({len(steps)} in all)" if len(steps) > limit else "")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _chosen_notes(raw: RawChoice, res) -> list[str]:
    if res.how == "exact":
        return []
    where = f"{_label(raw)}: generated tokens ({raw.chosen_field})"
    if res.how == "text":
        return [f"{where} at {_steps(res.ambiguous_steps)} stand for several ids each; the generated "
                f"text admits one id sequence, which was taken"]
    if res.how == "text-several":
        return [f"{where} at {_steps(res.ambiguous_steps)} stand for several ids each; the generated "
                f"text admits several id sequences and the first was taken (ambiguous)"]
    why = "the log has no generated text" if res.how == "no-text" else "the generated text does not match the tokens"
    detail = "; ".join(f"step {t} {raw.chosen[t].shown} → id {res.ids[t]} of {len(raw.chosen[t].ids)}"
                       for t in res.ambiguous_steps[:8])
    more = "…" if len(res.ambiguous_steps) > 8 else ""
    return [f"{where}: {why}, so tokens standing for several ids took the lowest (ambiguous): {detail}{more}"]


def _map_topk(raw: RawChoice, output_ids: list[int], notes: list[str]):
    """Per step ``[(id, logprob)]`` in file order; an ambiguous entry is the chosen token when its
    logprob matches, else it is left out: which of its ids the logprob belongs to is unknown (a
    server keying by string keeps one colliding id's value, not necessarily the best one's), and a
    guess would be evidence made up."""
    out, merged, dropped = [], set(), []
    for t, entries in enumerate(raw.topk):
        chosen = output_ids[t]
        clp = raw.token_logprobs[t] if raw.token_logprobs is not None else None
        used: set[int] = set()
        row: list[tuple[int, float] | None] = [None] * len(entries)
        # exact entries first, so that a guess never takes an id the list names exactly
        order = sorted(range(len(entries)), key=lambda j: not entries[j][0].exact)
        for j in order:
            tok, lp = entries[j]
            if tok.exact:
                i = tok.ids[0]
            else:
                merged.add(t)
                if chosen in tok.ids and chosen not in used and (clp is None or abs(lp - clp) <= SAME_LOGPROB):
                    i = chosen
                else:  # kept as a placeholder: it still counts towards the list's length and ranks
                    dropped.append(t)
                    row[j] = (None, lp)
                    continue
            if i in used:
                raise raw.line.error(tok.field, f"token id {i} appears twice in one top-k list")
            used.add(i)
            row[j] = (i, lp)
        _check_chosen_entry(raw, t, row, entries, chosen, clp)
        out.append(row)
    where = f"{_label(raw)}: top-k ({raw.topk_field.format(t='…')})"
    if dropped:
        notes.append(f"{where}: {_plural(len(dropped), 'entry', 'entries')} at {_steps(sorted(set(dropped)))} "
                     f"stood for several ids, none certainly the chosen token, and were left out (partial "
                     f"evidence: the rest of each list is used)")
    if merged and raw.topk_by_string:
        notes.append(f"{where} at {_steps(sorted(merged))}: keyed by a token string several ids share; a list "
                     f"keyed by string holds one of them, so the others may be missing")
    return out, merged


def _check_chosen_entry(raw: RawChoice, t: int, row, entries, chosen: int, clp: float | None) -> None:
    """Refuse a step whose top-k entry for the chosen token disagrees with that token's own logprob."""
    if clp is None:
        return
    for (i, lp), (tok, _) in zip(row, entries):
        if i == chosen and abs(lp - clp) > CONSISTENT_LOGPROB:
            raise raw.line.error(tok.field, f"step {t}: the chosen token (id {i}) has logprob {lp} here but {clp} "
                                            f"as the generated token's logprob; a server computes both in one "
                                            f"pass, so the log is inconsistent")


def _infer_k(staged: list[_Staged]) -> tuple[int | None, bool]:
    """The log's ``k``, and whether lists of ``k + 1`` entries carry the chosen token beyond the top-k.

    That is read from the lists themselves: ``k + 1`` entries happen exactly when the chosen token
    is outside the top-k, so every longest list must end with the chosen token (lowest logprob) and
    every list one shorter must contain it; otherwise the longest length is ``k``.
    """
    rows = [(row, s.output_ids[t]) for s in staged if s.topk is not None for t, row in enumerate(s.topk)]
    if not rows:
        return None, False
    m = max(len(r) for r, _ in rows)
    longest = [(r, c) for r, c in rows if len(r) == m]
    shorter = [(r, c) for r, c in rows if len(r) == m - 1]
    ends_with_chosen = all(c in dict(r) and dict(r)[c] <= min(lp for _, lp in r) for r, c in longest)
    plus_one = bool(shorter) and ends_with_chosen and all(c in dict(r) for r, c in shorter)
    return (m - 1 if plus_one else m), plus_one


def _observation(s: _Staged, k: int | None, plus_one: bool) -> Observation:
    raw = s.raw
    topk_ids = topk_lps = None
    partial = False
    if s.topk is not None and k:
        topk_ids, topk_lps = [], []
        for t, row in enumerate(s.topk):
            if len(row) < k and t not in s.merged:
                entries = _plural(len(row), "entry", "entries")
                raise raw.line.error(raw.topk_field.format(t=t),
                                     f"has {entries} where the rest of the log has k={k} (truncated top-k)")
            # the k best as the server ranked them, then without the entries that name no single id
            best = [e for e in sorted(row, key=lambda e: -e[1])[:k] if e[0] is not None]
            if not best:
                raise raw.line.error(raw.topk_field.format(t=t), "has no entry that names one token id")
            partial |= len(best) < k
            topk_ids.append([i for i, _ in best])
            topk_lps.append([lp for _, lp in best])
    meta = dict(raw.meta)
    if partial:  # some lists lost entries to token strings that collide: the features use what is left
        meta.update(topk_k=k, topk_partial=True)
    if plus_one and topk_ids is not None:
        meta["topk_plus_chosen"] = True  # the log's lists held the chosen token beyond the top-k
    kv = {key: v for key, v in raw.kvfp.items() if key != "prompt_ids"}
    if kv:
        meta["kvfp"] = kv
    return Observation(prompt_ids=s.prompt_ids, output_ids=s.output_ids,
                       token_logprobs=list(raw.token_logprobs) if raw.token_logprobs is not None else None,
                       topk_ids=topk_ids, topk_logprobs=topk_lps, logits=raw.logits,
                       prompt_logprobs=align_prompt_logprobs(raw, s.prompt_ids), probe_id=s.probe_id,
                       source=raw.source, notes=s.notes, meta=meta)
