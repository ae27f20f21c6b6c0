"""Gateway mode's pieces: ``--upstream NAME=[KEY_ENV@]BASE_URL`` values, routing by ``NAME/`` prefix
(hosted models first), the key from its variable, error pass-through without the key, retry waits,
and answers (streamed or not) read as chat completions."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError

from tuneloop.api.upstream import Assembly, NotACompletion, Upstreams, _retry_wait, completion_of, route
from tuneloop.cli.serve import parse_upstreams
from tuneloop.config import Settings, Upstream
from tuneloop.errors import TuneloopError

from helpers import run_cli


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("openai=OPENAI_API_KEY@https://api.openai.com/v1", ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY")),
        ("ollama=http://127.0.0.1:11434/v1/", ("ollama", "http://127.0.0.1:11434/v1", None)),
        ("vllm=http://user@gpu-box:8000/v1", ("vllm", "http://user@gpu-box:8000/v1", None)),  # '@' of the URL
        ("t.2=K_1@http://u:p@host/v1", ("t.2", "http://u:p@host/v1", "K_1")),
    ],
)
def test_upstream_values_parse(value, expected):
    upstream = Upstream.parse(value)
    assert (upstream.name, upstream.base_url, upstream.key_env) == expected
    assert Upstream.parse(upstream.spec()) == upstream


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("teacher", "expected NAME=[KEY_ENV@]BASE_URL"),
        ("teacher=", "expected NAME=[KEY_ENV@]BASE_URL"),
        ("a/b=http://h/v1", "the name 'a/b' must be"),
        ("=http://h/v1", "the name '' must be"),
        ("t=api.openai.com/v1", "must start with http:// or https://"),
        ("t=KEY@ftp://h", "must start with http:// or https://"),
        ("t=MY-KEY@http://h", "'MY-KEY' is not an environment variable name"),
    ],
)
def test_bad_upstream_values_are_one_line_errors(value, says):
    with pytest.raises(TuneloopError) as caught:
        parse_upstreams([value])
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_upstreams_from_the_environment_and_the_command_line(monkeypatch):
    monkeypatch.setenv("TUNELOOP_UPSTREAMS", '["teacher=K@http://h/v1"]')
    configured = Settings().upstreams
    assert configured == [Upstream(name="teacher", base_url="http://h/v1", key_env="K")]
    assert [u.name for u in parse_upstreams(["other=http://o/v1"], configured)] == ["teacher", "other"]
    with pytest.raises(TuneloopError, match="two upstreams are named 'teacher'"):
        parse_upstreams(["teacher=http://o/v1"], configured)
    monkeypatch.setenv("TUNELOOP_UPSTREAMS", '["a=http://h/v1", "a=http://i/v1"]')
    with pytest.raises(ValidationError, match="two upstreams are named 'a'"):
        Settings()


def test_serve_refuses_a_bad_upstream_in_one_line():
    result = run_cli("serve", "--upstream", "teacher=not-a-url", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --upstream: the base URL 'not-a-url' of 'teacher' must start with http:// or https://"
    ]


def _upstreams(monkeypatch, *specs: str) -> Upstreams:
    monkeypatch.setenv("TEACHER_KEY", "sk-secret")
    return Upstreams.open(Settings(upstreams=list(specs)))


def test_the_key_comes_from_its_variable_which_must_be_set(monkeypatch):
    upstreams = _upstreams(monkeypatch, "teacher=TEACHER_KEY@http://h/v1", "local=http://l/v1")
    assert upstreams.clients["teacher"].http.headers["authorization"] == "Bearer sk-secret"
    assert "authorization" not in upstreams.clients["local"].http.headers
    asyncio.run(upstreams.aclose())
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(TuneloopError, match="environment variable TEACHER_KEY named for the key of upstream 'teacher'"):
        Upstreams.open(Settings(upstreams=["teacher=TEACHER_KEY@http://h/v1"]))


def test_routing_by_prefix_with_hosted_models_first(monkeypatch):
    upstreams = _upstreams(monkeypatch, "teacher=TEACHER_KEY@http://h/v1")
    assert upstreams.get("teacher/gpt-4o-mini").model == "gpt-4o-mini"
    assert upstreams.get("teacher/org/model:7b").model == "org/model:7b"  # only the first '/' splits
    for model in ("teacher", "teacher/", "other/gpt-4o", "tiny-llama", "ft:tiny-llama:local:x:ftjob-1"):
        assert upstreams.get(model) is None, model
    hosted = {"teacher/kept-here"}
    state = SimpleNamespace(upstreams=upstreams, pool=SimpleNamespace(exists=lambda m: m in hosted))
    assert asyncio.run(route(state, "teacher/kept-here")) is None
    assert asyncio.run(route(state, "teacher/elsewhere")).upstream is upstreams.clients["teacher"]
    asyncio.run(upstreams.aclose())


def test_an_upstream_error_passes_back_without_the_key(monkeypatch):
    client = _upstreams(monkeypatch, "teacher=TEACHER_KEY@http://h/v1").clients["teacher"]
    error = {"error": {"message": "Incorrect API key provided: sk-secret.", "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}}  # fmt: skip
    reply = client.passed_back(httpx.Response(401, json=error), json.dumps(error).encode())
    body = json.loads(reply.body)
    assert reply.status_code == 401 and "sk-secret" not in reply.body.decode()
    assert body["error"] == {"message": "Upstream `teacher`: Incorrect API key provided: ***.",
                             "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}  # fmt: skip
    limited = client.passed_back(httpx.Response(429, headers={"retry-after": "60"}), b'{"detail": "slow down"}')
    assert limited.headers["retry-after"] == "60"
    assert json.loads(limited.body)["error"]["message"] == "Upstream `teacher`: slow down"
    plain = json.loads(client.passed_back(httpx.Response(404), b"no such route").body)["error"]
    assert plain["message"] == "Upstream `teacher` answered HTTP 404 Not Found: no such route"
    assert plain["code"] == "upstream_error" and plain["type"] == "invalid_request_error"
    asyncio.run(client.http.aclose())


def test_retry_waits():
    assert _retry_wait(httpx.Response(400), 0) is None and _retry_wait(httpx.Response(501), 0) is None
    assert 0.25 <= _retry_wait(httpx.Response(503), 0) <= 0.5 and 0.5 <= _retry_wait(httpx.Response(500), 1) <= 1
    assert _retry_wait(httpx.Response(429, headers={"retry-after": "2"}), 0) == 2
    assert _retry_wait(httpx.Response(429, headers={"retry-after-ms": "1500"}), 0) == 1.5
    assert _retry_wait(httpx.Response(429, headers={"retry-after": "3600"}), 0) is None  # passed back instead
    assert _retry_wait(httpx.Response(503, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), 0) == 0


def test_answers_read_as_chat_completions():
    meta = {"id": "chatcmpl-here", "model": "teacher/m"}
    answer = {"id": "x", "created": 5, "model": "m-2024", "system_fingerprint": "fp_1", "service_tier": "default",
              "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                           "message": {"role": "assistant", "content": "Hi", "refusal": None, "annotations": []}}],
              "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5,
                        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0}}}  # fmt: skip
    completion = completion_of(answer, meta)
    assert (completion.id, completion.model, completion.created) == ("chatcmpl-here", "teacher/m", 5)
    assert completion.choices[0].message.content == "Hi" and completion.usage.prompt_tokens_details.cached_tokens == 2
    for garbage in ({"foo": 1}, [1], {"choices": [{"delta": {}}]}, {"choices": [{"message": {"content": 5}}]}):
        with pytest.raises(NotACompletion):
            completion_of(garbage, meta)


def test_a_streamed_answer_is_assembled():
    assembly = Assembly()
    deltas = [
        {"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                               "function": {"name": "get", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]  # fmt: skip
    for delta in deltas:
        assert assembly.add({"created": 7, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    assert assembly.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    assert assembly.add({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})
    completion = assembly.completion({"id": "chatcmpl-s", "model": "teacher/m"})
    choice = completion.choices[0]
    assert choice.message.content is None and choice.finish_reason == "tool_calls" and completion.created == 7
    assert choice.message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert completion.usage.total_tokens == 13
    assert not Assembly().add({"choices": [{"delta": {"tool_calls": 5}}]})
