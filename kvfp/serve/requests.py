"""The request bodies ``kvfp serve`` accepts, validated field by field.

Unknown fields are refused rather than ignored: a client that asks for something kvfp serve does
not do (sampling, stop strings, streaming) gets a 400 naming the field instead of a silently
different answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvfp.serve.backend import MAX_TOP_LOGPROBS

TopK = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = None
    seed: int | None = None  # accepted and without effect: decoding is greedy
    stop: str | list[str] | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # vLLM's extensions
    prompt_logprobs: int | None = TopK
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = False

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, v):
        if v not in (None, 0):
            raise ValueError("kvfp serve decodes greedily; temperature must be 0 or left out")
        return v

    @field_validator("top_p")
    @classmethod
    def _no_nucleus(cls, v):
        if v not in (None, 1):
            raise ValueError("kvfp serve decodes greedily; top_p must be 1 or left out")
        return v

    @field_validator("n")
    @classmethod
    def _one(cls, v):
        if v not in (None, 1):
            raise ValueError("kvfp serve returns one choice per request; n must be 1")
        return v

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v):
        if v:
            raise ValueError("streaming is not supported; leave stream out or false")
        return v

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, v):
        if v:
            raise ValueError("stop sequences are not supported (generation ends at max_tokens or end of sequence)")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v not in (None, 0):
            raise ValueError("penalties change the distribution kvfp serves; only 0 is accepted")
        return v


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = TopK
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("is empty")
            if isinstance(v[0], (str, list)):
                if len(v) != 1:
                    raise ValueError("one prompt per request (a batch of several prompts is not supported)")
                v = v[0]
            if isinstance(v, list) and not v:
                raise ValueError("is empty")
        elif not v:
            raise ValueError("is empty")
        return v


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = TopK
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self
