"""Gateway mode: chat requests for ``NAME/<model>`` forwarded to the upstream OpenAI-compatible server
``NAME`` (``tuneloop serve --upstream NAME=[KEY_ENV@]BASE_URL``), streamed or not, stored on ``store: true``.

The rule: a model tuneloop hosts is always served here; otherwise a model ``NAME/<id>`` whose ``NAME``
is an upstream goes to it as ``<id>``; anything else is the usual 404. The request goes as the
client sent it (tools, response format, sampling), less ``store`` and ``metadata``, with the key
from ``KEY_ENV`` (read once at start, never stored, logged or echoed). Answers carry the model
name the client asked for and a completion id of this server, as local answers do.

Failures come back in OpenAI's envelope: an upstream's error with its status, message, type and
code (the message prefixed with the upstream's name); an upstream that cannot be reached, breaks
off or answers something that is not a chat completion, 502 ``upstream_error``; one that is too
slow, 504 ``upstream_timeout``. A failed request stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneloop.api.errors import APIError, envelope
from tuneloop.api.protocol import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionMessage,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    Usage,
    sse_error,
)
from tuneloop.config import Settings, Upstream
from tuneloop.errors import TuneloopError
from tuneloop.retry import RetryPolicy, retry_after_seconds, retryable
from tuneloop.store.ids import random_id

if TYPE_CHECKING:
    from tuneloop.api.state import AppState

log = logging.getLogger(__name__)

Keeper = Callable[[ChatCompletion], Awaitable[None]]
#: Waits between tries (0.5 s doubling up to 8 s, with jitter); the longest ``retry-after`` honoured is 30 s:
#: an upstream asking for more gets its answer passed back. How many tries: ``upstream_retries``.
RETRY = RetryPolicy(base=0.5, cap=8.0, max_retry_after=30.0)


class NotACompletion(ValueError):
    """An upstream's answer that cannot be read as a chat completion."""


class UpstreamClient:
    """One upstream: its name, its key and one HTTP client (connections kept alive between requests)."""

    def __init__(self, upstream: Upstream, key: str | None, settings: Settings):
        self.name, self.key = upstream.name, key
        self.timeout, self.retries = settings.upstream_timeout_seconds, settings.upstream_retries
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(base_url=upstream.base_url + "/", headers=headers, timeout=self.timeout)

    async def chat(self, model: str, body: ChatRequest, raw: bytes, keep: Keeper | None) -> Response:
        """Forward a chat request (``raw``, its JSON body) as ``model``; store the answer with ``keep``."""
        payload = json.loads(raw)
        payload["model"] = model
        for own in ("store", "metadata"):  # this server's, not the upstream's
            payload.pop(own, None)
        wants_usage = body.include_usage()
        added_usage = body.stream and keep is not None and not wants_usage  # stored answers keep their usage
        if added_usage:
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        meta = {"id": random_id("chatcmpl-"), "model": body.model}
        sent = await self._send(payload)
        if isinstance(sent, Response):
            return sent
        if body.stream:
            if "text/event-stream" not in sent.headers.get("content-type", ""):
                kind = sent.headers.get("content-type", "").split(";")[0] or "a body without a content type"
                await sent.aclose()
                raise self.failure(f"answered {kind} instead of an event stream")
            return StreamingResponse(self._relay(sent, meta, added_usage, keep), media_type="text/event-stream")
        try:
            data = json.loads(await sent.aread())
        except httpx.TimeoutException as exc:
            raise self.too_slow() from exc
        except httpx.TransportError as exc:
            raise self.failure(f"broke off its answer ({_reason(exc)})") from exc
        except ValueError as exc:
            raise self.failure("answered something that is not JSON") from exc
        finally:
            await sent.aclose()
        try:
            completion = completion_of(data, meta)
        except NotACompletion as exc:
            raise self.failure(f"answered JSON that is not a chat completion ({exc})") from exc
        if keep is not None:
            await keep(completion)
        return JSONResponse({**data, **meta})

    async def _send(self, payload: dict[str, Any]) -> httpx.Response | Response:
        """The upstream's 2xx response (its body not read yet), or the error to answer; retried with
        backoff (or the upstream's ``retry-after``) while the upstream cannot take the request."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.http.send(self.http.build_request("POST", "chat/completions", json=payload),
                                                stream=True)  # fmt: skip
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if last:  # refused, reset or closed before any answer
                    if isinstance(exc, httpx.ConnectTimeout):
                        raise self.too_slow() from exc
                    raise self.failure(f"cannot be reached ({_reason(exc)})") from exc
                await asyncio.sleep(RETRY.backoff(attempt, random.random()))
                continue
            except httpx.TimeoutException as exc:
                raise self.too_slow() from exc
            except httpx.TransportError as exc:
                raise self.failure(f"cannot be reached ({_reason(exc)})") from exc
            if response.is_success:
                return response
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            wait = _retry_wait(response, attempt)
            if last or wait is None:
                return self.passed_back(response, content)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def passed_back(self, response: httpx.Response, content: bytes) -> JSONResponse:
        """An upstream's error answer in OpenAI's envelope: its status, and its message, type, param
        and code where it sent OpenAI's envelope (else a message saying what came back)."""
        status = response.status_code if response.status_code >= 400 else 502
        detail = _error_detail(content)
        if detail is not None:
            message = f"Upstream `{self.name}`: {detail.get('message') or 'no message'}"
        else:
            message = f"Upstream `{self.name}` answered HTTP {response.status_code} {response.reason_phrase}"
            snippet = " ".join(content[:200].decode("utf-8", "replace").split())
            message += f": {snippet}" if snippet and not snippet.startswith("<") else "."
            detail = {"code": "upstream_error"}
        error = envelope(status, self.redact(message)).error
        for key in ("type", "param", "code"):
            if isinstance(value := detail.get(key), str | int) and not isinstance(value, bool):
                setattr(error, key, self.redact(str(value)))
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "upstream %s answered %d: %s", self.name, response.status_code, error.message)
        headers = {k: v for k in ("retry-after", "retry-after-ms") if (v := response.headers.get(k)) is not None}
        return JSONResponse({"error": error.model_dump()}, status_code=status, headers=headers)

    async def _relay(
        self, response: httpx.Response, meta: dict[str, str], added_usage: bool, keep: Keeper | None
    ) -> AsyncIterator[str]:
        """The upstream's chunks as they come (with this server's id and model name), then ``[DONE]``;
        a broken stream ends with the error envelope and ``[DONE]``, and stores nothing."""
        assembly = Assembly() if keep is not None else None
        failure, done = None, False
        try:
            async for data in _sse_data(response):
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    failure = self.failure("sent an event that is not JSON")
                    break
                if isinstance(chunk, dict) and chunk.get("error") is not None:
                    failure = self.stream_error(chunk["error"])
                    break
                if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
                    failure = self.failure("sent an event that is not a chat completion chunk")
                    break
                chunk = {**chunk, **meta}
                if assembly is not None and not assembly.add(chunk):
                    failure = self.failure("sent a chat completion chunk it cannot be assembled from")
                    break
                if added_usage:  # the client did not ask for usage: the upstream's usage chunk is not relayed
                    if not chunk["choices"]:
                        continue
                    chunk.pop("usage", None)
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except httpx.TimeoutException:
            failure = self.too_slow()
        except httpx.TransportError as exc:
            failure = self.failure(f"broke off its stream ({_reason(exc)})")
        finally:
            with anyio.CancelScope(shield=True):  # also when the client left (the relay is cancelled)
                await response.aclose()
        if failure is None and not done:
            failure = self.failure("ended its stream before [DONE]")
        if failure is not None:
            yield sse_error(failure)
        elif keep is not None and assembly is not None:
            try:
                completion = assembly.completion(meta)
            except NotACompletion as exc:
                yield sse_error(self.failure(f"streamed something that is not a chat completion ({exc})"))
            else:
                await keep(completion)
        yield SSE_DONE

    def stream_error(self, error: Any) -> APIError:
        """The error event an upstream sent in the middle of its stream, as this server's."""
        detail = _error_detail(json.dumps({"error": error}).encode()) or {}
        code = detail.get("code") if isinstance(detail.get("code"), str) else "upstream_error"
        message = self.redact(f"Upstream `{self.name}`: {detail.get('message') or 'error in its stream'}")
        log.warning("%s", message)
        return APIError(502, message, code=self.redact(code))

    def failure(self, what: str) -> APIError:
        """A 502 ``upstream_error``: the upstream ``what`` (its name, never its address or key)."""
        message = self.redact(f"The upstream `{self.name}` {what}.")
        log.warning("%s", message)
        return APIError(502, message, code="upstream_error")

    def too_slow(self) -> APIError:
        message = f"The upstream `{self.name}` did not answer within {self.timeout:g} s."
        log.warning("%s", message)
        return APIError(504, message, code="upstream_timeout")

    def redact(self, text: str) -> str:
        """``text`` without the key (an upstream may echo what it was sent)."""
        return text.replace(self.key, "***") if self.key else text


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def _retry_wait(response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before retrying an error answer; None when it is not worth retrying."""
    if not retryable(response.status_code):
        return None
    after = retry_after_seconds(response.headers)
    if after is None:
        return RETRY.backoff(attempt, random.random())
    return after if after <= RETRY.max_retry_after else None


def _error_detail(content: bytes) -> dict[str, Any] | None:
    """The error an upstream's body describes (OpenAI's envelope, ``{"error": "..."}``, ``{"detail": "..."}``
    or ``{"message": "..."}``), as ``{"message", "type", "param", "code"}`` where known; else None."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error
    for value in (error, data.get("detail"), data.get("message")):
        if isinstance(value, str) and value:
            return {"message": value}
    return None


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each server-sent event (comments, ``event:`` and ``id:`` lines aside)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def completion_of(data: Any, meta: dict[str, str]) -> ChatCompletion:
    """An upstream's chat completion in this server's shape, to store (fields tuneloop does not model,
    such as ``system_fingerprint``, are left out); a NotACompletion saying why it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise NotACompletion("no 'choices' list")
    try:
        choices = []
        for i, c in enumerate(data["choices"]):
            message = c["message"]
            logprobs = c.get("logprobs")
            try:
                logprobs = ChoiceLogprobs.model_validate(logprobs) if logprobs else None
            except ValueError:  # another server's logprobs shape: the answer stands without them
                logprobs = None
            answer = ChatCompletionMessage(content=message.get("content"), tool_calls=message.get("tool_calls") or None)
            choices.append(Choice(index=c.get("index", i), message=answer, finish_reason=c.get("finish_reason"),
                                  logprobs=logprobs))  # fmt: skip
        usage = data.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return ChatCompletion(
            **meta, created=int(data.get("created") or time.time()), choices=choices,
            usage=Usage.of(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                           cached if isinstance(cached, int) else None),
        )  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise NotACompletion(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


@dataclass
class Assembly:
    """A streamed answer put back together, as the non-streamed answer would have been."""

    created: int | None = None
    usage: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, chunk: dict[str, Any]) -> bool:
        """Take one chunk in; False when it is not shaped as a chat completion chunk."""
        try:
            self.created = self.created or chunk.get("created")
            self.usage = chunk.get("usage") or self.usage
            for c in chunk["choices"]:
                slot = self.choices.setdefault(c.get("index", 0), {"content": [], "calls": {}, "logprobs": []})
                delta = c.get("delta") or {}
                if isinstance(delta.get("content"), str):
                    slot["content"].append(delta["content"])
                for call in delta.get("tool_calls") or []:
                    new = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                    entry = slot["calls"].setdefault(call.get("index", 0), new)
                    entry["id"] = call.get("id") or entry["id"]
                    function = call.get("function") or {}
                    entry["function"]["name"] += function.get("name") or ""
                    entry["function"]["arguments"] += function.get("arguments") or ""
                if c.get("finish_reason"):
                    slot["finish_reason"] = c["finish_reason"]
                if c.get("logprobs"):
                    slot["logprobs"] += c["logprobs"].get("content") or []
        except (KeyError, TypeError, AttributeError):
            return False
        return True

    def completion(self, meta: dict[str, str]) -> ChatCompletion:
        choices = [
            {
                "index": index,
                "message": {"content": "".join(s["content"]) if s["content"] or not s["calls"] else None,
                            "tool_calls": [s["calls"][k] for k in sorted(s["calls"])]},
                "finish_reason": s.get("finish_reason"),
                "logprobs": {"content": s["logprobs"]} if s["logprobs"] else None,
            }
            for index, s in sorted(self.choices.items())
        ]  # fmt: skip
        return completion_of({"created": self.created, "choices": choices, "usage": self.usage}, meta)


@dataclass
class Route:
    """Where a request for an upstream's model goes: the upstream, and the model's id there."""

    upstream: UpstreamClient
    model: str

    async def chat(self, body: ChatRequest, raw: bytes, keep: Keeper | None) -> Response:
        return await self.upstream.chat(self.model, body, raw, keep)


@dataclass
class Upstreams:
    """The upstreams of a gateway, by name (none: not a gateway)."""

    clients: dict[str, UpstreamClient] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> Upstreams:
        """A client per configured upstream, with its key read from its environment variable."""
        clients = {}
        for upstream in settings.upstreams:
            key = None
            if upstream.key_env is not None:
                key = os.environ.get(upstream.key_env)
                if not key:
                    raise TuneloopError(f"the environment variable {upstream.key_env} named for the key of upstream "
                                        f"'{upstream.name}' is not set")  # fmt: skip
            clients[upstream.name] = UpstreamClient(upstream, key, settings)
        return cls(clients)

    def get(self, model: str) -> Route | None:
        """The upstream a model id ``NAME/<id>`` names, by its prefix alone (hosted models aside)."""
        name, slash, upstream_model = model.partition("/")
        if not slash or not upstream_model or name not in self.clients:
            return None
        return Route(self.clients[name], upstream_model)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.http.aclose()


async def route(state: AppState, model: str) -> Route | None:
    """Where a chat request for ``model`` goes upstream; None when it is served here (or unknown)."""
    found = state.upstreams.get(model)
    if found is None or await run_in_threadpool(state.pool.exists, model):  # hosted models always win
        return None
    return found
