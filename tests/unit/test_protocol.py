"""The wire shapes of ``api/protocol.py``: exact JSON keys and nulls, one sampling validation, one stream ending."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest

from tuneloop.api import chat, completions
from tuneloop.api.errors import APIError, model_not_found
from tuneloop.api.generation import Stream
from tuneloop.api.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatRequest,
    Choice,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Delta,
    Usage,
    sse,
)
from tuneloop.api.tool_calls import ChoiceOutput
from tuneloop.engine.engine import FinishEvent, TokenEvent

META = {"id": "chatcmpl-x", "created": 1, "model": "m"}


def _json(event: str) -> dict:
    assert event.startswith("data: ") and event.endswith("\n\n")
    return json.loads(event[len("data: ") : -2])


def test_chat_chunks_serialize_to_openai_keys_and_nulls():
    token = sse(ChatCompletionChunk(**META, choices=[ChunkChoice(index=0, delta=Delta(content="hi"))]))
    assert _json(token) == {
        **META, "object": "chat.completion.chunk", "system_fingerprint": None,
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None, "logprobs": None}], "usage": None,
    }  # fmt: skip
    first = ChunkChoice(index=1, delta=Delta(role="assistant", content="")).model_dump()
    assert first["delta"] == {"role": "assistant", "content": ""}
    assert ChunkChoice(index=0, delta=Delta(), finish_reason="stop").model_dump()["delta"] == {}
    last = _json(sse(ChatCompletionChunk(**META, choices=[], usage=Usage.of(3, 2, 1))))
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1},
    }  # fmt: skip


def test_chat_completion_and_completion_serialize_to_openai_keys_and_nulls():
    reply = ChatCompletion(
        **META, choices=[Choice(index=0, message=ChatCompletionMessage(content="hi"), finish_reason="length")],
        usage=Usage.of(3, 2, 0),
    )  # fmt: skip
    body = json.loads(reply.model_dump_json())
    assert list(body) == ["id", "created", "model", "object", "choices", "usage", "system_fingerprint"]
    assert body["object"] == "chat.completion" and body["system_fingerprint"] is None
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
                                "finish_reason": "length", "logprobs": None}]  # fmt: skip
    completion = Completion(
        **META, choices=[CompletionChoice(index=0, text="hi", finish_reason="stop")], usage=Usage.of(3, 2)
    )
    assert json.loads(completion.model_dump_json()) == {
        **META, "object": "text_completion",
        "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},  # no cache details
    }  # fmt: skip
    chunk = CompletionChunk(**META, choices=[CompletionChoice(index=0, text="h", finish_reason=None)])
    assert list(json.loads(chunk.model_dump_json())) == ["id", "created", "model", "object", "choices"]


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [""], ""])
def test_chat_and_completions_share_the_stop_limit(stop):
    chat_request = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], stop=stop)
    completion_request = CompletionRequest(model="m", prompt="hi", stop=stop)
    for request in (chat_request, completion_request):
        with pytest.raises(APIError) as err:
            request.sampling(8)
        assert (err.value.status, err.value.message, err.value.param) == (
            400, "'stop' takes up to 4 non-empty strings.", "stop"
        )  # fmt: skip


def test_sampling_params_from_either_request():
    params = CompletionRequest(model="m", prompt="hi", stop="x", logprobs=2, seed=3).sampling(5)
    assert (params.max_tokens, params.stop, params.logprobs, params.top_logprobs, params.seed) == (5, ["x"], True, 2, 3)
    chat_request = ChatRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=4,
        response_format={"type": "json_object"},
    )  # fmt: skip
    params = chat_request.sampling(7)
    assert (params.logprobs, params.top_logprobs, params.grammar.kind) == (True, 4, "json_object")


def test_model_not_found_is_one_envelope():
    body = model_not_found("nope").envelope().model_dump()
    assert body == {
        "error": {
            "message": "The model `nope` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def _failing_stream() -> Stream:
    stream = Stream()
    stream.requests.append(SimpleNamespace(cancelled=threading.Event(), cached_tokens=0))
    stream.queue.put_nowait((0, TokenEvent("Hi", None)))
    stream.queue.put_nowait((0, FinishEvent("error", 1, error="boom")))
    return stream


async def _drain(events) -> list[str]:
    return [e async for e in events]


def test_chat_and_completions_streams_fail_the_same_way():
    async def both():
        target = SimpleNamespace(engine=SimpleNamespace(tokenizer=None))
        chat_events = await _drain(chat._stream(_failing_stream(), target, META, 3, [ChoiceOutput(False)], True, None))
        completion_events = await _drain(completions._stream(_failing_stream(), META, None))
        return chat_events, completion_events

    chat_events, completion_events = asyncio.run(both())
    expected_error = {"error": {"message": "Generation failed: boom", "type": "server_error", "param": None,
                                "code": None}}  # fmt: skip
    for events in (chat_events, completion_events):
        assert events[-1] == "data: [DONE]\n\n"
        assert _json(events[-2]) == expected_error
        assert all("error" not in _json(e) for e in events[:-2])  # no finish or usage chunk after a failure
    assert _json(chat_events[1])["choices"][0]["delta"] == {"content": "Hi"}
    assert _json(completion_events[0])["choices"][0]["text"] == "Hi"
