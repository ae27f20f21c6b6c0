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

from tuneloop.api.errors import APIError, model_not_found
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
from tuneloop.errors import ModelNotFoundError


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
    engine, adapter = pool.acquire(resolved)
    return Target(resolved, engine, adapter, min(pool.context_length(resolved), engine.context_length))


def check_context(target: Target, prompt_ids: list[int], max_tokens: int | None) -> int:
    """The token budget of a request (``engine.token_budget``); 400 when the prompt does not fit the context."""
    try:
        return token_budget(target.context_length, len(prompt_ids), max_tokens)
    except ContextLengthError as exc:
        raise _too_long(exc) from exc


def _too_long(exc: ContextLengthError) -> APIError:
    return APIError(400, str(exc), param="messages", code="context_length_exceeded")


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


def start(target: Target, prompt_ids: list[int], params: SamplingParams, n: int) -> Stream:
    """Submit ``n`` sequences for one prompt (seeds ``seed + i``) and return their event stream."""
    loop = asyncio.get_running_loop()
    mailbox = _MAILBOXES.get(loop) or _MAILBOXES.setdefault(loop, _Mailbox(loop))
    stream = Stream()
    try:
        for i in range(n):
            p = params if params.seed is None or i == 0 else replace(params, seed=params.seed + i)

            def deliver(event: Event, index: int = i) -> None:
                mailbox.post(stream.queue, (index, event))

            stream.requests.append(target.engine.generate(prompt_ids, p, target.adapter, deliver))
    except QueueFullError as exc:
        stream.cancel()
        raise APIError(429, f"Too many requests queued for this model ({exc}); retry shortly.",
                       code="rate_limit_exceeded", headers={"retry-after": "1"}) from exc  # fmt: skip
    except ContextLengthError as exc:
        stream.cancel()
        raise _too_long(exc) from exc
    except GrammarError as exc:
        stream.cancel()
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
