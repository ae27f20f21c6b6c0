"""``/v1/chat/completions``: OpenAI-compatible chat on base, fine-tuned and checkpoint models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tuneloop.api import generation
from tuneloop.api.errors import APIError, generation_failed
from tuneloop.api.generation import Stream, Target, TokenEvent
from tuneloop.api.protocol import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprob,
    Usage,
    sse,
    sse_error,
    token_logprob,
)
from tuneloop.api.state import AppState, get_state
from tuneloop.data.render import ChatRenderer, TemplateError
from tuneloop.store.ids import random_id

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(state: State, body: ChatRequest, http: Request):
    messages = body.rendered_messages()
    target = await run_in_threadpool(generation.resolve_target, state.pool, body.model)
    try:
        prompt = ChatRenderer(target.engine.tokenizer).render_prompt(messages)
    except TemplateError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    max_tokens = generation.check_context(target, prompt, body.max_completion_tokens or body.max_tokens)
    stream = generation.start(target, prompt, body.sampling(max_tokens), body.n)
    meta = {"id": random_id("chatcmpl-"), "created": int(time.time()), "model": body.model}
    if body.stream:
        events = _stream(stream, target, meta, len(prompt), body.n, body.include_usage(), http)
        return StreamingResponse(events, media_type="text/event-stream")
    return await _collect(stream, target, meta, len(prompt), body.n, http)


async def _collect(
    stream: Stream, target: Target, meta: dict, prompt_tokens: int, n: int, http: Request
) -> ChatCompletion:
    texts, finish = [""] * n, [None] * n
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    completion_tokens = 0
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            texts[index] += event.text
            if (entry := token_logprob(target.engine.tokenizer, event)) is not None:
                logprobs[index].append(entry)
        else:
            if event.reason == "error":
                raise generation_failed(event.error)
            finish[index] = event.reason
            completion_tokens += event.completion_tokens
    wants_logprobs = stream.requests[0].params.logprobs
    choices = [
        Choice(
            index=i,
            message=ChatCompletionMessage(content=texts[i]),
            finish_reason=finish[i],
            logprobs=ChoiceLogprobs(content=logprobs[i]) if wants_logprobs else None,
        )
        for i in range(n)
    ]
    usage = Usage.of(prompt_tokens, completion_tokens, stream.requests[0].cached_tokens)
    return ChatCompletion(**meta, choices=choices, usage=usage)


async def _stream(
    stream: Stream,
    target: Target,
    meta: dict,
    prompt_tokens: int,
    n: int,
    include_usage: bool,
    http: Request,
) -> AsyncIterator[str]:
    """A role chunk per choice, a chunk per token, a finish chunk per choice, the usage chunk if asked
    for, then ``[DONE]``; a failure sends the error envelope instead of the rest, then ``[DONE]``."""

    def chunk(choice: ChunkChoice | None, usage: Usage | None = None) -> str:
        return sse(ChatCompletionChunk(**meta, choices=[choice] if choice else [], usage=usage))

    for i in range(n):
        yield chunk(ChunkChoice(index=i, delta=Delta(role="assistant", content="")))
    completion_tokens = 0
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            entry = token_logprob(target.engine.tokenizer, event)
            if not event.text and entry is None:
                continue
            logprobs = ChoiceLogprobs(content=[entry]) if entry is not None else None
            yield chunk(ChunkChoice(index=index, delta=Delta(content=event.text), logprobs=logprobs))
        elif event.reason == "error":
            yield sse_error(generation_failed(event.error))
            break
        else:
            completion_tokens += event.completion_tokens
            yield chunk(ChunkChoice(index=index, delta=Delta(), finish_reason=event.reason))
    else:
        if include_usage:
            yield chunk(None, Usage.of(prompt_tokens, completion_tokens, stream.requests[0].cached_tokens))
    yield SSE_DONE
