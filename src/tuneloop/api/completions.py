"""``/v1/completions``: prompt → text, for completion-style use (no chat template)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tuneloop.api import generation
from tuneloop.api.errors import generation_failed
from tuneloop.api.generation import Stream
from tuneloop.api.protocol import (
    SSE_DONE,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
    sse,
    sse_error,
)
from tuneloop.api.state import AppState, get_state
from tuneloop.engine.engine import TokenEvent
from tuneloop.store.ids import random_id

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


@router.post("/completions", response_model=Completion)
async def completions(state: State, body: CompletionRequest, http: Request):
    prompts = body.prompts()
    target = await run_in_threadpool(generation.resolve_target, state.pool, body.model)
    tokenizer = target.engine.tokenizer
    meta = {"id": random_id("cmpl-"), "created": int(time.time()), "model": body.model}
    streams, prompt_tokens = [], 0
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        prompt_tokens += len(ids)
        params = body.sampling(generation.check_context(target, ids, body.max_tokens))
        streams.append(generation.start(target, ids, params, body.n))
    if body.stream:
        return StreamingResponse(_stream(streams[0], meta, http), media_type="text/event-stream")
    choices, completion_tokens = [], 0
    for p_index, stream in enumerate(streams):
        texts, finish = [""] * body.n, [None] * body.n
        logprobs = [CompletionLogprobs() for _ in range(body.n)]
        async for index, event in generation.events(stream, http):
            if isinstance(event, TokenEvent):
                logprobs[index].add(tokenizer, event, len(texts[index]))
                texts[index] += event.text
            else:
                if event.reason == "error":
                    raise generation_failed(event.error)
                finish[index] = event.reason
                completion_tokens += event.completion_tokens
        choices += [
            CompletionChoice(index=p_index * body.n + i, text=texts[i], finish_reason=finish[i],
                             logprobs=logprobs[i] if body.logprobs is not None else None)
            for i in range(body.n)
        ]  # fmt: skip
    usage = Usage.of(prompt_tokens, completion_tokens)
    return Completion(**meta, choices=choices, usage=usage)


async def _stream(stream: Stream, meta: dict, http: Request) -> AsyncIterator[str]:
    """A chunk per token and one per finished choice, then ``[DONE]``; a failure sends the error
    envelope instead of the rest, then ``[DONE]`` (as chat does)."""
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            if not event.text:
                continue
            choice = CompletionChoice(index=index, text=event.text, finish_reason=None)
        elif event.reason == "error":
            yield sse_error(generation_failed(event.error))
            break
        else:
            choice = CompletionChoice(index=index, text="", finish_reason=event.reason)
        yield sse(CompletionChunk(**meta, choices=[choice]))
    yield SSE_DONE
