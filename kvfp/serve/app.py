"""The HTTP side of ``kvfp serve``: OpenAI-compatible routes, and errors in OpenAI's shape.

A client's mistake is a 4xx naming the field (``{"error": {"message", "type", "param", "code"}}``),
never a traceback; anything else is a 500 whose body says only that the server failed (the
traceback goes to the server's own log).
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kvfp.datasets.openai_shapes import chat_content, completions_logprobs, vllm_prompt_logprobs
from kvfp.datasets.tokens import TokenText
from kvfp.serve.backend import Backend, Completion
from kvfp.serve.requests import ChatRequest, CompletionRequest

log = logging.getLogger("kvfp.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _field(loc) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # pydantic names the union member it tried ("str", "list[int]"); the client only needs the field
    parts = [p for p in parts if not any(c in p for c in "[]") and p not in ("str", "int", "list")]
    return ".".join(parts) or None


def make_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="kvfp serve", docs_url=None, redoc_url=None, openapi_url=None)
    tt = TokenText(backend.tokenizer)
    cfg = backend.config

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _field(first.get("loc", ()))
        msg = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        return _error(400, f"{param}: {msg}" if param else msg, param)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, "the server failed on this request (see the server's log)")

    @app.get("/v1/models")
    def models():
        card = {"id": cfg.name, "object": "model", "created": 0, "owned_by": "kvfp",
                "max_model_len": backend.max_positions}
        if not cfg.hide_scheme:
            card["kvfp"] = {"scheme": backend.scheme.name, "dtype": cfg.dtype, "attn": cfg.attn}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    def check_model(name: str) -> None:
        if name != cfg.name:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {cfg.name!r}", "model",
                           "model_not_found")

    def check_ids(ids: list[int], max_tokens: int, param: str) -> None:
        bad = next((i for i in ids if not 0 <= i < backend.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"{param}: token id {bad} is outside the vocabulary (0–{backend.vocab_size - 1})",
                           param)
        if len(ids) + max_tokens > backend.max_positions:
            raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                                f"{backend.max_positions} positions", "max_tokens" if max_tokens else param)

    def usage(c: Completion) -> dict:
        return {"prompt_tokens": len(c.prompt_ids), "completion_tokens": len(c.output_ids),
                "total_tokens": len(c.prompt_ids) + len(c.output_ids)}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        check_model(req.model)
        prompt = req.prompt
        ids = backend.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        check_ids(ids, 0, "prompt")
        # echo shows the prompt as the model saw it, special tokens included, so text and offsets agree
        prompt_text = backend.tokenizer.decode(ids)
        if not ids:
            raise ApiError(400, "prompt: tokenizes to no tokens", "prompt")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens == 0 and not req.echo:
            raise ApiError(400, "max_tokens: 0 is only useful with echo", "max_tokens")
        check_ids(ids, max_tokens, "prompt")
        top = req.logprobs or 0
        want_prompt = bool(req.prompt_logprobs is not None or (req.echo and req.logprobs is not None))
        c = backend.complete(ids, max_tokens, top, want_prompt, req.ignore_eos)
        as_ids = req.return_tokens_as_token_ids
        text = backend.tokenizer.decode(c.output_ids)
        lp = None
        if req.logprobs is not None:
            none = [None] * len(c.output_ids)
            lp = completions_logprobs(tt, c.output_ids, c.token_logprobs, c.topk_ids if top else none,
                                      c.topk_logprobs if top else none, as_ids=as_ids)
            if not top:
                lp["top_logprobs"] = None
        if req.echo:
            text = prompt_text + text
            if lp is not None:
                # prompt positions carry their own token's logprob; their alternatives are not computed
                head = completions_logprobs(tt, ids, c.prompt_logprobs, [None] * len(ids), [None] * len(ids),
                                            as_ids=as_ids)
                shift = head["text_offset"][-1] + len(head["tokens"][-1])
                lp = {"tokens": head["tokens"] + lp["tokens"],
                      "token_logprobs": head["token_logprobs"] + lp["token_logprobs"],
                      "top_logprobs": None if lp["top_logprobs"] is None else head["top_logprobs"] + lp["top_logprobs"],
                      "text_offset": head["text_offset"] + [shift + o for o in lp["text_offset"]]}
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": c.finish_reason}
        if req.prompt_logprobs is not None:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(tt, c.prompt_ids, c.prompt_logprobs)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": cfg.name, "choices": [choice], "usage": usage(c)}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        check_model(req.model)
        if not backend.tokenizer.chat_template:
            raise ApiError(400, f"messages: {cfg.model} has no chat template; use /v1/completions", "messages")
        ids = backend.chat_ids([m.model_dump() for m in req.messages])
        max_tokens = req.max_completion_tokens or req.max_tokens or 16
        check_ids(ids, max_tokens, "messages")
        top = req.top_logprobs or 0
        c = backend.complete(ids, max_tokens, top, req.prompt_logprobs is not None, req.ignore_eos)
        choice = {"index": 0, "message": {"role": "assistant", "content": backend.tokenizer.decode(c.output_ids)},
                  "logprobs": None, "finish_reason": c.finish_reason}
        if req.logprobs:
            choice["logprobs"] = {"content": chat_content(tt, c.output_ids, c.token_logprobs, c.topk_ids,
                                                          c.topk_logprobs, as_ids=req.return_tokens_as_token_ids)}
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
               "model": cfg.name, "choices": [choice], "usage": usage(c)}
        if req.prompt_logprobs is not None:
            out["prompt_logprobs"] = vllm_prompt_logprobs(tt, c.prompt_ids, c.prompt_logprobs)
        return out

    return app
