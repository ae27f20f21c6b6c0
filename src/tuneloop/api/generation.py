"""Shared by the chat and completions endpoints: build engine requests, stream their events to asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from fastapi import Request as HTTPRequest
from fastapi.concurrency import run_in_threadpool

from tuneloop.api.errors import APIError, model_not_found, redact_paths
from tuneloop.engine.engine import (
    ContextLengthError,
    Engine,
    Event,
    FinishEvent,
    QueueFullError,
    Request,
    TokenEvent,
    token_budget,
)
from tuneloop.engine.grammar import GrammarError, GrammarSpec
from tuneloop.engine.lora_weights import LoraAdapter
from tuneloop.engine.model_pool import ModelPool, ResolvedModel
from tuneloop.engine.sampling import SamplingParams
from tuneloop.errors import ModelNotFoundError, TuneloopError


@dataclass
class Target:
    """Where a request runs."""

    resolved: ResolvedModel
    engine: Engine
    adapter: LoraAdapter | None
    context_length: int


def resolve_target(pool: ModelPool, model: str) -> Target:
    try:
        resolved = pool.resolve(model)
    except ModelNotFoundError as exc:
        raise model_not_found(model) from exc
    try:
        engine, adapter = pool.acquire(resolved)
    except (TuneloopError, OSError) as exc:  # damaged or missing files: say so, but not where they are
        reason = redact_paths(str(exc)).rstrip(".")
        raise APIError(500, f"The model `{model}` cannot be served: {reason}.", param="model",
                       code="model_load_failed") from exc  # fmt: skip
    return Target(resolved, engine, adapter, min(pool.context_length(resolved), engine.context_length))


#: Characters a prompt may hold per token of the model's context: past this a prompt cannot fit,
#: whatever it says, and is refused before it is tokenised (tokenising megabytes takes seconds).
CHARS_PER_TOKEN = 32


def text_chars(value: object) -> int:
    """The characters of every string in a request's messages (or prompts, tools): nested
    dicts and lists included."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(text_chars(v) for v in value)
    return 0


def check_chars(target: Target, chars: int, param: str) -> None:
    """A 400 ``context_length_exceeded`` for a prompt of more characters than the context can hold."""
    limit = target.context_length * CHARS_PER_TOKEN
    if chars > limit:
        raise APIError(400, f"This model's maximum context length is {target.context_length} tokens, at most "
                       f"{limit:,} characters; your request has {chars:,}. Please reduce the length of the "
                       f"{param}.", param=param, code="context_length_exceeded")  # fmt: skip


def check_context(target: Target, prompt_ids: list[int], max_tokens: int | None, param: str = "messages") -> int:
    """The token budget of a request (``engine.token_budget``); 400 when the prompt does not fit the context."""
    try:
        return token_budget(target.context_length, len(prompt_ids), max_tokens)
    except ContextLengthError as exc:
        raise _too_long(exc, param) from exc


def _too_long(exc: ContextLengthError, param: str = "messages") -> APIError:
    return APIError(400, str(exc), param=param, code="context_length_exceeded")


async def check_grammar(target: Target, spec: GrammarSpec) -> None:
    """A 400 when ``spec`` cannot constrain the model's tokens (its first use builds the engine's
    grammar vocabulary, about half a second: in a worker thread, not on the event loop)."""
    try:
        await run_in_threadpool(target.engine.check_grammar, spec)
    except GrammarError as exc:
        raise _bad_grammar(spec, exc) from exc


def _bad_grammar(spec: GrammarSpec, exc: GrammarError) -> APIError:
    param = "tools" if spec.kind == "tool_calls" else "response_format"
    return APIError(400, f"Cannot constrain decoding for this request: {exc}", param=param, code="invalid_value")


@dataclass
class Stream:
    """Events of n parallel requests, delivered to an asyncio consumer."""

    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    requests: list[Request] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        for r in self.requests:
            r.cancelled.set()


class _Mailbox:
    """Hands events from the engine thread to an event loop with one wake-up for everything posted
    since the loop last looked (a decode step posts one event per running request)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = weakref.ref(loop), threading.Lock()  # weak: the loop keys _MAILBOXES
        self.items: list[tuple[asyncio.Queue, tuple[int, Event]]] = []

    def post(self, queue: asyncio.Queue, item: tuple[int, Event]) -> None:
        with self.lock:
            self.items.append((queue, item))
            if len(self.items) > 1:  # a delivery is already scheduled
                return
        loop = self.loop()
        if loop is not None:
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()


def start(target: Target, prompts: list[tuple[list[int], SamplingParams]], n: int) -> Stream:
    """Submit ``n`` sequences for each (prompt, sampling) pair (seeds ``seed + i``; choice index
    ``prompt * n + i``) and return their event stream. All or nothing: when one cannot start
    (too long, a bad grammar, no room in the queue), none is queued."""
    loop = asyncio.get_running_loop()
    mailbox = _MAILBOXES.get(loop) or _MAILBOXES.setdefault(loop, _Mailbox(loop))
    stream = Stream()
    params = prompts[0][1]
    try:
        for p_index, (prompt_ids, params) in enumerate(prompts):
            for i in range(n):
                p = params if params.seed is None or i == 0 else replace(params, seed=params.seed + i)

                def deliver(event: Event, index: int = p_index * n + i) -> None:
                    mailbox.post(stream.queue, (index, event))

                stream.requests.append(target.engine.request(prompt_ids, p, target.adapter, deliver))
        target.engine.submit(*stream.requests)
    except QueueFullError as exc:
        raise APIError(429, f"Too many requests queued for this model ({exc}); retry shortly.",
                       code="rate_limit_exceeded", headers={"retry-after": "1"}) from exc  # fmt: skip
    except ContextLengthError as exc:
        raise _too_long(exc) from exc
    except GrammarError as exc:
        raise _bad_grammar(params.grammar, exc) from exc
    return stream


async def events(stream: Stream, http: HTTPRequest | None = None) -> AsyncIterator[tuple[int, Event]]:
    """Yield (choice index, event) until every sequence finished; cancel them if the client leaves."""
    pending = len(stream.requests)
    try:
        while pending:
            try:  # what a step already delivered, else wait (a timeout costs less than wait_for's task)
                index, event = stream.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    async with asyncio.timeout(1.0):
                        index, event = await stream.queue.get()
                except TimeoutError:
                    if http is not None and await http.is_disconnected():
                        return
                    continue
            if isinstance(event, FinishEvent):
                pending -= 1
            yield index, event
    finally:
        stream.cancel()  # no-op for finished requests; stops compute for abandoned ones


__all__ = ["FinishEvent", "TokenEvent"]
