"""The ``kvfp query`` run: probes out, logged responses in, a summary of what the server supports."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from kvfp.errors import KvfpError
from kvfp.query.client import Client, RequestFailed
from kvfp.query.log import QueryLog
from kvfp.query.prompts import PromptText, echoed_ids
from kvfp.query.shapes import BadResponse, Seen, chat_body, check_chat, check_completion, completion_body
from kvfp.query.spec import APIS, PROMPT_MODES, QuerySpec


@dataclass
class Summary:
    probes: int = 0
    answered_before: int = 0
    answered_now: int = 0
    prompt_mode: str = ""
    token_id_prompts: bool | None = None  # None: not tried
    top_logprobs_max: int = 0
    steps: int = 0
    short_steps: int = 0
    prompt_logprobs: bool | None = None
    prompt_checks: dict = field(default_factory=dict)
    retries: int = 0
    over_max_tokens: int = 0  # responses that went past max_tokens
    torn_tail_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _validate(spec: QuerySpec) -> None:
    if spec.api not in APIS:
        raise KvfpError(f"unknown --api {spec.api!r}; choose {' or '.join(APIS)}", exit_code=2)
    if spec.prompt_mode not in PROMPT_MODES:
        raise KvfpError(f"unknown --prompt-mode {spec.prompt_mode!r}; choose {', '.join(PROMPT_MODES)}", exit_code=2)
    if not spec.url.startswith(("http://", "https://")):
        raise KvfpError(f"--url {spec.url!r} is not an http(s) URL", exit_code=2)
    if not 1 <= spec.top_logprobs <= 20:
        raise KvfpError("--top-logprobs must be between 1 and 20 (the OpenAI API's cap)", exit_code=2)


def _api_key(spec: QuerySpec) -> str | None:
    if spec.api_key_env is None:
        return None
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise KvfpError(f"--api-key-env {spec.api_key_env}: that environment variable is not set", exit_code=2)
    return key


def _load_suite(spec: QuerySpec):
    from kvfp.collect.suite import load_suite
    from kvfp.probes.model_tokenizer import load_tokenizer

    name = spec.tokenizer_model or spec.model_name
    try:
        tokenizer, model_max = load_tokenizer(name)
    except KvfpError as e:
        hint = "" if spec.tokenizer_model else " (pass --tokenizer-model with the kvfp model or folder the server runs)"
        raise KvfpError(f"the tokenizer for {name!r} is needed to send probes and read answers: {e}{hint}",
                        exit_code=2) from None
    suite = load_suite(spec.probes, tokenizer, model_name=name, model_max=model_max, new_tokens=spec.max_tokens)
    return tokenizer, suite


class _Asker:
    """Builds the request for a probe, sends it, checks the answer and makes the log record."""

    def __init__(self, spec: QuerySpec, client: Client, pt: PromptText, suite_hash: str, summary: Summary):
        self.spec, self.client, self.pt, self.suite_hash, self.summary = spec, client, pt, suite_hash, summary
        self.mode = "chat" if spec.api == "chat" else spec.prompt_mode

    def decide_mode(self, probe) -> None:
        """``auto``: send the first probe as token ids; a server that refuses them gets text."""
        if self.mode != "auto":
            return
        try:  # no retries: some servers answer a prompt type they do not take with a 500 (llama-cpp-python)
            self.client.post("/completions", {**completion_body(self.spec, probe.ids, False), "max_tokens": 1},
                             retries=0)
            self.mode, self.summary.token_id_prompts = "ids", True
        except RequestFailed as e:
            self.mode, self.summary.token_id_prompts = "text", False
            how = "read back through echo" if self.spec.echo else "the model's tokenizer's segmentation of the text, " \
                "checked against the server's usage count (--echo reads them back instead)"
            self.summary.notes.append(f"the server did not take a token-id prompt ({str(e)[:200]}); probes are sent as "
                                      f"text and the prompt ids are {how}")

    def ask(self, probe) -> tuple[dict, Seen]:
        spec = self.spec
        block = {"probe_id": probe.id, "suite_hash": self.suite_hash}
        if self.mode == "chat":
            text = self.pt.text(probe.ids)
            resp = self.client.post("/chat/completions", chat_body(spec, text))
            seen = check_chat(spec, resp)
            ids = self.pt.chat_ids(probe.ids)
            check = ("usage-count-unreported" if seen.prompt_tokens is None else
                     "chat-template-count-matches" if seen.prompt_tokens == len(ids) else "chat-template-count-differs")
            block.update(prompt_ids=ids, prompt="chat-template")
        elif self.mode == "ids":
            resp = self.client.post("/completions", completion_body(spec, probe.ids, False))
            seen = check_completion(spec, resp, echo=False)
            check = "sent-as-ids"
            block.update(prompt_ids=list(probe.ids))
        elif not spec.echo:
            text = self.pt.text(probe.ids)
            resp = self.client.post("/completions", completion_body(spec, text, False))
            seen = check_completion(spec, resp, echo=False)
            ids = self.pt.encode(text)
            check = ("usage-count-unreported" if seen.prompt_tokens is None else
                     "tokenizer-count-matches" if seen.prompt_tokens == len(ids) else "tokenizer-count-differs")
            block.update(prompt_ids=ids, prompt="text-tokenized")
        else:
            text = self.pt.text(probe.ids)
            resp = self.client.post("/completions", completion_body(spec, text, True))
            seen = check_completion(spec, resp, echo=True)
            ids, how = echoed_ids(seen.echo_tokens, text, self.pt.tokenizer)
            if ids is None:
                raise BadResponse("an echoed prompt token is not in the tokenizer's vocabulary (is --tokenizer-model "
                                  "the model the server runs?)")
            check = ("echo-matches-probe" if ids == list(probe.ids) else "echo-differs-from-probe") + \
                ("" if how in ("exact", "text") else "-ambiguous")
            block.update(prompt_ids=ids, echo=len(ids))
        block.update(prompt_check=check, query=spec.settings())
        resp = {k: v for k, v in resp.items() if k != "kvfp"}
        resp["kvfp"] = block
        try:  # the log holds valid JSON only: a response with NaN or Infinity is refused here
            json.dumps(resp, allow_nan=False)
        except ValueError:
            raise BadResponse("the response holds NaN or Infinity") from None
        return resp, seen

    def record(self, seen: Seen, check: str) -> None:
        s = self.summary
        s.steps += seen.steps
        s.short_steps += seen.short_steps
        s.top_logprobs_max = max(s.top_logprobs_max, seen.max_entries)
        if self.spec.prompt_logprobs or (self.mode == "text" and self.spec.echo):
            s.prompt_logprobs = bool(s.prompt_logprobs or seen.prompt_logprobs)
        s.prompt_checks[check] = s.prompt_checks.get(check, 0) + 1
        s.over_max_tokens += seen.over_max > 0


_CHECK_NOTES = {
    "tokenizer-count-differs": "the server counted another number of prompt tokens than the tokenizer makes of the "
                               "text: it does not run this tokenizer (check --tokenizer-model), or adds tokens of its "
                               "own; the prompt ids in the log may be wrong",
    "chat-template-count-differs": "the server's prompt has another length than the chat template applied here: it "
                                   "applies another template; the prompt ids in the log may be wrong",
    "usage-count-unreported": "the server reports no usage count, so the prompt ids sent as text could not be "
                              "checked (--echo reads them back where the server supports it)",
    "echo-differs-from-probe": "the server tokenized some probes otherwise than their ids (BPE merges across the "
                               "probe's seams); the log holds the ids it really used, and identify replays those",
}


def _check_notes(summary: Summary) -> None:
    if summary.over_max_tokens:
        summary.notes.append(f"{summary.over_max_tokens} response(s) held more tokens than max_tokens (the server "
                             f"finishing a character split over several tokens); all of them are logged")
    for check, n in sorted(summary.prompt_checks.items()):
        for key, text in _CHECK_NOTES.items():
            if check.startswith(key):
                summary.notes.append(f"{n} probe(s): {text}")
        if check.endswith("-ambiguous"):
            summary.notes.append(f"{n} probe(s): echoed tokens that several ids share could not all be pinned "
                                 f"down by the text; the lowest ids were taken")


def query(spec: QuerySpec, *, progress: Callable[[int, int], None] | None = None,
          log: Callable[[str], None] = lambda m: None, sleep=None) -> Summary:
    """Send every probe of the suite not yet answered in ``spec.out``; return what the server showed.

    Raises :class:`KvfpError` naming the probe when a response is refused or the server keeps
    failing; every line written before that stays, and running again resumes.
    """
    _validate(spec)
    key = _api_key(spec)
    tokenizer, suite = _load_suite(spec)
    if spec.api == "chat" and not getattr(tokenizer, "chat_template", None):
        raise KvfpError(f"--api chat: the tokenizer of {spec.tokenizer_model or spec.model_name!r} has no chat "
                        f"template, so the prompt the model sees cannot be known; use --api completions", exit_code=2)
    qlog = QueryLog(spec.out, spec.settings(), suite.hash)
    qlog.open()
    summary = Summary(probes=len(suite.probes), answered_before=len(qlog.answered), torn_tail_bytes=qlog.torn)
    if qlog.torn:
        log(f"{spec.out}: cut off a torn last line ({qlog.torn} bytes) left by an interrupted run; its probe is "
            f"asked again")
    todo = [p for p in suite.probes if p.id not in qlog.answered]
    kwargs = {"sleep": sleep} if sleep is not None else {}
    client = Client(spec.base, timeout=spec.timeout, retries=spec.retries, api_key=key, **kwargs)
    asker = _Asker(spec, client, PromptText(tokenizer), suite.hash, summary)
    done = 0
    try:
        if todo and spec.api == "completions":
            try:
                asker.decide_mode(todo[0])
            except RequestFailed as e:
                raise KvfpError(f"probe {todo[0].id}: {e}") from None
        summary.prompt_mode = asker.mode
        if progress:
            progress(0, len(todo))
        with ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
            pending = {}
            queue = list(todo)
            failure = None
            while queue or pending:
                while queue and len(pending) < spec.concurrency and failure is None:
                    p = queue.pop(0)
                    pending[pool.submit(asker.ask, p)] = p
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    p = pending.pop(fut)
                    try:
                        record, seen = fut.result()
                        qlog.append(record)
                    except (RequestFailed, BadResponse) as e:
                        failure = failure or KvfpError(f"probe {p.id}: {e}")
                        continue
                    except OSError as e:
                        failure = failure or KvfpError(f"cannot write the log {spec.out}: {e.strerror or e}")
                        continue
                    asker.record(seen, record["kvfp"]["prompt_check"])
                    done += 1
                    summary.answered_now = done
                    if progress:
                        progress(done, len(todo))
                if failure is not None and not pending:
                    break
            if failure is not None:
                left = len(todo) - done
                raise KvfpError(f"{failure}\n{done} probe(s) logged in this run, {left} left; fix the cause and run "
                                f"the same command again to resume")
        _check_notes(summary)
    finally:
        summary.retries = client.stats.retries
        client.close()
        qlog.close()
    return summary
