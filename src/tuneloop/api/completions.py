"""``/v1/completions``: prompt → text, for completion-style use (no chat template)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
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
    generation.check_chars(target, max(map(len, prompts)), "prompt")
    ids = await run_in_threadpool(lambda: [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts])
    # every prompt is checked before any starts: a request that fails leaves nothing running
    starts = [(p, body.sampling(generation.check_context(target, p, body.max_tokens, "prompt"))) for p in ids]
    stream = generation.start(target, starts, body.n)
    meta = {"id": random_id("cmpl-"), "created": int(time.time()), "model": body.model}
    if body.stream:
        return StreamingResponse(_stream(stream, meta, http), media_type="text/event-stream")
    n = len(stream.requests)
    texts, finish = [""] * n, [None] * n
    logprobs = [CompletionLogprobs() for _ in range(n)]
    completion_tokens = 0
    async with aclosing(generation.events(stream, http)) as events:  # closed: a failure stops every choice
        async for index, event in events:
            if isinstance(event, TokenEvent):
                logprobs[index].add(tokenizer, event, len(texts[index]))
                texts[index] += event.text
            else:
                if event.reason == "error":
                    raise generation_failed(event.error)
                finish[index] = event.reason
                completion_tokens += event.completion_tokens
    choices = [
        CompletionChoice(index=i, text=texts[i], finish_reason=finish[i],
                         logprobs=logprobs[i] if body.logprobs is not None else None)
        for i in range(n)
    ]  # fmt: skip
    prompt_tokens = sum(map(len, ids))
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
