"""Shared by the chat and completions endpoints: build engine requests, stream their events to asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request as HTTPRequest

from tuneloop.api.errors import APIError
from tuneloop.engine.engine import Detokenizer, Engine, Event, FinishEvent, QueueFullError, Request, TokenEvent
from tuneloop.engine.json_mode import JsonConstraint
from tuneloop.engine.lora_weights import LoraAdapter
from tuneloop.engine.model_pool import ModelPool, ResolvedModel
from tuneloop.engine.sampling import Sampler, SamplingParams
from tuneloop.errors import ModelNotFoundError


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


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
    return Target(resolved, engine, adapter, min(pool.context_length(resolved), engine.runner.max_len))


def check_context(target: Target, prompt_ids: list[int], max_tokens: int | None) -> int:
    """The token budget of a request; 400 when the prompt does not fit the context."""
    room = target.context_length - len(prompt_ids)
    if room <= 0:
        msg = (
            f"This model's maximum context length is {target.context_length} tokens. However, your messages "
            f"resulted in {len(prompt_ids)} tokens. Please reduce the length of the messages."
        )
        raise APIError(400, msg, param="messages", code="context_length_exceeded")
    return min(max_tokens or room, room)


_TOKEN_TEXTS: dict[int, list[str]] = {}


def token_texts(tokenizer) -> list[str]:
    """Every token's text (computed once per tokenizer; used by JSON mode)."""
    key = id(tokenizer)
    if key not in _TOKEN_TEXTS:
        _TOKEN_TEXTS[key] = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return _TOKEN_TEXTS[key]


def eos_ids(engine: Engine) -> set[int]:
    tok = engine.tokenizer
    ids = {tok.eos_token_id}
    extra = getattr(engine.runner.hf.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return {i for i in ids if i is not None}


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
    eos = eos_ids(target.engine)
    for i in range(n):
        p = params if params.seed is None or i == 0 else SamplingParams(**{**params.__dict__, "seed": params.seed + i})
        json = JsonConstraint(token_texts(target.engine.tokenizer), eos) if p.json_object else None

        def deliver(event: Event, index: int = i) -> None:
            mailbox.post(stream.queue, (index, event))

        stream.requests.append(
            Request(list(prompt_ids), p, Sampler(p, eos, json), Detokenizer(target.engine.tokenizer, p.stop),
                    deliver, target.adapter)
        )  # fmt: skip
    try:
        for r in stream.requests:
            target.engine.submit(r)
    except QueueFullError as exc:
        stream.cancel()
        raise APIError(429, f"Too many requests queued for this model ({exc}); retry shortly.",
                       code="rate_limit_exceeded", headers={"retry-after": "1"}) from exc  # fmt: skip
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


def token_logprob(tokenizer, token: int, logprob: float) -> dict:
    text = tokenizer.decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def choice_logprobs(tokenizer, event: TokenEvent) -> dict | None:
    """OpenAI's chat logprobs entry for one generated token."""
    c = event.choice
    if c is None or c.logprob is None:
        return None
    entry = token_logprob(tokenizer, c.token, c.logprob)
    entry["top_logprobs"] = [token_logprob(tokenizer, t, lp) for t, lp in (c.top or [])]
    return entry


def usage(prompt_tokens: int, completion_tokens: int, stream: Stream | None = None) -> dict:
    """OpenAI's ``usage`` object; ``cached_tokens`` counts prompt tokens the prefix cache served."""
    body = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if stream is not None and stream.requests:
        body["prompt_tokens_details"] = {"cached_tokens": stream.requests[0].cached_tokens}
    return body


__all__ = ["FinishEvent", "TokenEvent"]
