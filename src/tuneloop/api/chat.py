"""``/v1/chat/completions``: OpenAI-compatible chat on base, fine-tuned and checkpoint models."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.api import generation
from tuneloop.api.errors import APIError
from tuneloop.api.generation import FinishEvent, TokenEvent
from tuneloop.api.state import AppState, get_state
from tuneloop.data.render import ChatRenderer, TemplateError
from tuneloop.engine.sampling import SamplingParams
from tuneloop.store.ids import random_id

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]
ROLES = ("system", "developer", "user", "assistant")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object"]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The supported part of the Chat Completions request; any other field is answered with a 400."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def sampling(self, max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "'stop' takes up to 4 non-empty strings.", param="stop")
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=stop,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            logprobs=self.logprobs, top_logprobs=self.top_logprobs or 0,
            json_object=self.response_format is not None and self.response_format.type == "json_object",
        )  # fmt: skip


def _messages(body: ChatRequest) -> list[dict]:
    if not body.messages:
        raise APIError(400, "'messages' must contain at least one message.", param="messages")
    out = []
    for i, m in enumerate(body.messages):
        if m.role not in ROLES:
            raise APIError(
                400, f"Invalid value for 'messages[{i}].role': '{m.role}'. Supported roles: {', '.join(ROLES)}.",
                param=f"messages[{i}].role", code="invalid_value",
            )  # fmt: skip
        if isinstance(m.content, list) and any(p.get("type") != "text" for p in m.content):
            raise APIError(
                400, f"messages[{i}]: only text content parts are supported.", param=f"messages[{i}].content"
            )
        out.append({"role": "system" if m.role == "developer" else m.role, "content": m.content or ""})
    return out


@router.post("/chat/completions")
async def chat_completions(state: State, body: ChatRequest, http: Request):
    messages = _messages(body)
    target = await run_in_threadpool(generation.resolve_target, state.pool, body.model)
    try:
        prompt = ChatRenderer(target.engine.tokenizer).render_prompt(messages)
    except TemplateError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    max_tokens = generation.check_context(target, prompt, body.max_completion_tokens or body.max_tokens)
    stream = generation.start(target, prompt, body.sampling(max_tokens), body.n)
    meta = {"id": random_id("chatcmpl-"), "created": int(time.time()), "model": body.model}
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _sse(stream, target, meta, len(prompt), body.n, include_usage, http), media_type="text/event-stream"
        )
    return await _collect(stream, target, meta, len(prompt), body.n, http)


async def _collect(stream, target, meta: dict, prompt_tokens: int, n: int, http: Request) -> dict:
    texts, logprobs, finish = [""] * n, [[] for _ in range(n)], [None] * n
    completion_tokens = 0
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            texts[index] += event.text
            if (entry := generation.choice_logprobs(target.engine.tokenizer, event)) is not None:
                logprobs[index].append(entry)
        else:
            _raise_if_error(event)
            finish[index] = event.reason
            completion_tokens += event.completion_tokens
    wants_logprobs = stream.requests[0].params.logprobs
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": texts[i], "refusal": None},
            "finish_reason": finish[i],
            "logprobs": {"content": logprobs[i], "refusal": None} if wants_logprobs else None,
        }
        for i in range(n)
    ]
    usage = generation.usage(prompt_tokens, completion_tokens, stream)
    return {**meta, "object": "chat.completion", "choices": choices, "usage": usage, "system_fingerprint": None}


def _raise_if_error(event: FinishEvent) -> None:
    if event.reason == "error":
        raise APIError(500, f"Generation failed: {event.error}")


async def _sse(stream, target, meta: dict, prompt_tokens: int, n: int, include_usage: bool, http: Request):
    # every chunk's fields but its choices and usage, encoded once (a chunk a token per stream)
    head = json.dumps({**meta, "object": "chat.completion.chunk", "system_fingerprint": None})[:-1]

    def chunk(choices: list, usage: dict | None = None) -> str:
        return f'data: {head}, "choices": {json.dumps(choices)}, "usage": {json.dumps(usage)}}}\n\n'

    for i in range(n):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                      "logprobs": None}])  # fmt: skip
    completion_tokens = 0
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            entry = generation.choice_logprobs(target.engine.tokenizer, event)
            if not event.text and entry is None:
                continue
            logprobs = {"content": [entry], "refusal": None} if entry is not None else None
            yield chunk([{"index": index, "delta": {"content": event.text}, "finish_reason": None,
                          "logprobs": logprobs}])  # fmt: skip
        elif event.reason == "error":
            error = {
                "message": f"Generation failed: {event.error}",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        else:
            completion_tokens += event.completion_tokens
            yield chunk([{"index": index, "delta": {}, "finish_reason": event.reason, "logprobs": None}])
    if include_usage:
        yield chunk([], generation.usage(prompt_tokens, completion_tokens, stream))
    yield "data: [DONE]\n\n"
