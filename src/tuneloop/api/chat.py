"""``/v1/chat/completions``: OpenAI-compatible chat on base, fine-tuned and checkpoint models, with
tools (``api/tool_calls.py``) and structured outputs (``engine/grammar.py``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tuneloop.api import generation, upstream
from tuneloop.api.errors import APIError, generation_failed
from tuneloop.api.generation import Stream, Target, TokenEvent
from tuneloop.api.protocol import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionChunk,
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
from tuneloop.api.tool_calls import ChoiceOutput
from tuneloop.data.render import ChatRenderer, TemplateError
from tuneloop.store.ids import random_id

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(state: State, body: ChatRequest, http: Request):
    if (teacher := await upstream.route(state, body.model)) is not None:  # gateway mode: NAME/<model> upstream
        keep = _keeper(state, body, time.perf_counter()) if body.store else None
        return await teacher.chat(body, await http.body(), keep)
    messages, tools = body.rendered_messages(), body.rendered_tools()
    body.grammar()  # a bad schema or tool choice is a 400 before any model loads
    target = await run_in_threadpool(generation.resolve_target, state.pool, body.model)
    generation.check_chars(target, generation.text_chars([messages, tools]), "messages")
    renderer = ChatRenderer(target.engine.tokenizer)
    body.use_syntax(renderer.syntax)
    try:  # rendering and tokenising take a while for long prompts: not on the event loop
        prompt = await run_in_threadpool(renderer.render_prompt, messages, tools)
    except TemplateError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    max_tokens = generation.check_context(target, prompt, body.max_completion_tokens or body.max_tokens)
    params = body.sampling(max_tokens)
    if params.grammar is not None:
        await generation.check_grammar(target, params.grammar)
    stream = generation.start(target, [(prompt, params)], body.n)
    outputs = [ChoiceOutput(body.calls_tools(), renderer.syntax) for _ in range(body.n)]
    meta = {"id": random_id("chatcmpl-"), "created": int(time.time()), "model": body.model}
    keep = _keeper(state, body, time.perf_counter()) if body.store else None
    if body.stream:
        events = _stream(stream, target, meta, len(prompt), outputs, body.include_usage(), http, keep)
        return StreamingResponse(events, media_type="text/event-stream")
    completion = await _collect(stream, target, meta, len(prompt), outputs, http)
    if keep is not None:
        await keep(completion)
    return completion


def _keeper(state: AppState, body: ChatRequest, started: float) -> Callable[[ChatCompletion], Awaitable[None]]:
    """What stores an answered completion of a ``store: true`` request (after the answer is whole)."""
    request = body.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"store", "metadata"})

    async def keep(completion: ChatCompletion) -> None:
        latency_ms = int((time.perf_counter() - started) * 1000)
        response = completion.model_dump(mode="json")
        await run_in_threadpool(state.completions.add, response, request, body.metadata or {}, latency_ms)

    return keep


async def _collect(
    stream: Stream, target: Target, meta: dict, prompt_tokens: int, outputs: list[ChoiceOutput], http: Request
) -> ChatCompletion:
    n = len(outputs)
    finish: list[str | None] = [None] * n
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    completion_tokens = 0
    async with aclosing(generation.events(stream, http)) as events:  # closed: a failure stops every choice
        async for index, event in events:
            if isinstance(event, TokenEvent):
                outputs[index].deltas(event.text)
                if (entry := token_logprob(target.engine.tokenizer, event)) is not None:
                    logprobs[index].append(entry)
            else:
                if event.reason == "error":
                    raise generation_failed(event.error)
                outputs[index].finish()
                finish[index] = outputs[index].finish_reason(event.reason)
                completion_tokens += event.completion_tokens
    wants_logprobs = stream.requests[0].params.logprobs
    choices = [
        Choice(
            index=i,
            message=outputs[i].message(),
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
    outputs: list[ChoiceOutput],
    include_usage: bool,
    http: Request,
    keep: Callable[[ChatCompletion], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """A role chunk per choice, a chunk per token, a finish chunk per choice, the usage chunk if asked
    for, then ``[DONE]``; a failure sends the error envelope instead of the rest, then ``[DONE]``.
    With tools, a choice's role rides in its first chunk, which may be its first call's."""
    tools = any(o.parser is not None for o in outputs)
    role_sent = [not tools] * len(outputs)

    def chunk(index: int, delta: Delta, finish: str | None = None, logprobs: ChoiceLogprobs | None = None) -> str:
        if not role_sent[index]:
            delta.role, role_sent[index] = "assistant", True
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
        return sse(ChatCompletionChunk(**meta, choices=[choice]))

    if not tools:
        for i in range(len(outputs)):
            yield chunk(i, Delta(role="assistant", content=""))
    completion_tokens = 0
    finish: list[str | None] = [None] * len(outputs)
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            entry = token_logprob(target.engine.tokenizer, event)
            deltas = outputs[index].deltas(event.text)
            if not deltas and entry is not None:
                deltas = [Delta(content="")] if not tools else [Delta()]
            for k, delta in enumerate(deltas):
                logprobs = ChoiceLogprobs(content=[entry]) if entry is not None and k == 0 else None
                yield chunk(index, delta, logprobs=logprobs)
        elif event.reason == "error":
            yield sse_error(generation_failed(event.error))
            break
        else:
            completion_tokens += event.completion_tokens
            for delta in outputs[index].finish():
                yield chunk(index, delta)
            finish[index] = outputs[index].finish_reason(event.reason)
            yield chunk(index, Delta(), finish[index])
    else:
        usage = Usage.of(prompt_tokens, completion_tokens, stream.requests[0].cached_tokens)
        if include_usage:
            yield sse(ChatCompletionChunk(**meta, choices=[], usage=usage))
        if keep is not None:  # the assembled answer, as the non-streamed reply would have been
            choices = [Choice(index=i, message=o.message(), finish_reason=finish[i]) for i, o in enumerate(outputs)]
            await keep(ChatCompletion(**meta, choices=choices, usage=usage))
    yield SSE_DONE
