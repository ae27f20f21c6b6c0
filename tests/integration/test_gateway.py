"""Gateway mode through the official client: a tuneloop server forwards ``teacher/<model>`` to another
tuneloop server (its key from an environment variable), streamed or not, stores what ``store: true``
asks for, and answers an upstream's errors, an unreachable, slow or garbled upstream in OpenAI's
envelope, storing nothing then; the key is never echoed."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from tuneloop.api.process import free_port
from tuneloop.config import Settings
from tuneloop.models import Catalog
from tuneloop.store.completions import CompletionStore
from tuneloop.store.db import make_engine

from helpers import ServerProcess

TEACHER_KEY = "sk-teacher-secret-4242"
WRONG_KEY = "sk-wrong-secret-1717"
FAKE_KEY = "sk-fake-secret-9090"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def _completion(model: str, content: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "system_fingerprint": "fp_upstream", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}  # fmt: skip


def _chunk(content: str) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}  # fmt: skip
    return f"data: {json.dumps(chunk)}\n\n".encode()


class FakeUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server gone wrong, one way per model name; it records what it was sent."""

    seen: list[tuple[dict, str]] = []

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the gateway gave up waiting ("slow")
            self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        model, key = body["model"], self.headers.get("authorization", "")
        self.seen.append((body, key))
        if model == "not-json":
            self.reply(200, b"hello, this is not JSON")
        elif model == "not-completion":
            self.reply(200, b'{"foo": "bar"}')
        elif model == "html-500":
            self.reply(500, b"<html><body>Internal Server Error</body></html>", "text/html")
        elif model == "echo-key":  # an upstream that quotes the key it was sent
            error = {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                     "param": None, "code": "invalid_api_key"}  # fmt: skip
            self.reply(401, json.dumps({"error": error}).encode())
        elif model == "flaky" and sum(b["model"] == "flaky" for b, _ in self.seen) == 1:
            self.reply(503, b'{"error": {"message": "overloaded", "type": "server_error"}}', retry_after="0")
        elif model == "flaky":
            self.reply(200, json.dumps(_completion(model, "second time lucky")).encode())
        elif model == "slow":
            time.sleep(3)
            self.reply(200, json.dumps(_completion(model, "too late")).encode())
        elif model in ("broken-stream", "truncated-stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(_chunk("Hello") + (b"data: {broken\n\n" if model == "broken-stream" else b""))
        else:
            self.reply(404, b"no such route")


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model_dir):
    """(teacher, gateway, fake upstream's handler class): the teacher needs TEACHER_KEY; the gateway
    knows it as ``teacher``, as ``wrong`` with a wrong key, ``down`` (a closed port) and ``fake``."""
    fake = ThreadingHTTPServer(("127.0.0.1", 0), FakeUpstream)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    home = tmp_path_factory.mktemp("gateway")
    Catalog(Settings(home=home / "teacher")).add("tiny-llama", tiny_model_dir)
    teacher = ServerProcess(home / "teacher", "--no-worker", env={"TUNELOOP_API_KEY": TEACHER_KEY})
    upstreams = [
        f"teacher=TEACHER_KEY@{teacher.base_url}",
        f"wrong=WRONG_KEY@{teacher.base_url}",
        f"down=http://127.0.0.1:{free_port()}/v1",
        f"fake=FAKE_KEY@http://127.0.0.1:{fake.server_port}/v1",
    ]
    env = {"TEACHER_KEY": TEACHER_KEY, "WRONG_KEY": WRONG_KEY, "FAKE_KEY": FAKE_KEY,
           "TUNELOOP_UPSTREAM_RETRIES": "1", "TUNELOOP_UPSTREAM_TIMEOUT_SECONDS": "2"}  # fmt: skip
    gateway = ServerProcess(home / "gateway", "--no-worker", *(a for u in upstreams for a in ("--upstream", u)),
                            env=env)  # fmt: skip
    try:
        teacher.wait_ready()
        gateway.wait_ready()
        yield teacher, gateway, FakeUpstream
        for key in (TEACHER_KEY, WRONG_KEY, FAKE_KEY):
            assert key not in gateway.read_log(chars=10**6)
    finally:
        teacher.stop()
        gateway.stop()
        fake.shutdown()


def tokens(usage) -> tuple[int, int]:
    return usage.prompt_tokens, usage.completion_tokens  # (cached tokens vary: the teacher caches prefixes)


def ask(client, model: str, **kw):
    return client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, temperature=0, **kw)


def test_forwarded_chat_streamed_or_not_is_the_teachers_answer_and_is_stored(servers):
    teacher, gateway, _ = servers
    direct = ask(teacher.client(api_key=TEACHER_KEY), "tiny-llama")
    client = gateway.client()
    plain = ask(client, "teacher/tiny-llama")
    assert plain.choices[0].message.content == direct.choices[0].message.content
    assert plain.model == "teacher/tiny-llama" and tokens(plain.usage) == tokens(direct.usage) and plain.id != direct.id

    kept = ask(client, "teacher/tiny-llama", store=True, metadata={"run": "g1"})
    chunks = list(ask(client, "teacher/tiny-llama", store=True, metadata={"run": "g1"}, stream=True))
    assert all(c.choices for c in chunks), "a usage chunk the client did not ask for"
    assert {c.model for c in chunks} == {"teacher/tiny-llama"} and len({c.id for c in chunks}) == 1
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed_text == direct.choices[0].message.content
    with_usage = list(ask(client, "teacher/tiny-llama", stream=True, stream_options={"include_usage": True}))
    assert tokens(with_usage[-1].usage) == tokens(direct.usage)

    listed = client.chat.completions.list(model="teacher/tiny-llama")
    assert [c.id for c in listed.data] == [kept.id, chunks[0].id]  # plain and with_usage not stored
    got = client.chat.completions.retrieve(chunks[0].id)
    assert got.choices[0].message.content == streamed_text and tokens(got.usage) == tokens(direct.usage)
    assert got.metadata == {"run": "g1"} and got.choices[0].finish_reason == direct.choices[0].finish_reason
    record = CompletionStore(make_engine(Settings(home=gateway.home))).get(chunks[0].id)
    assert record.latency_ms > 0 and record.request["model"] == "teacher/tiny-llama" and "store" not in record.request
    messages = client.chat.completions.messages.list(kept.id)
    assert [(m.role, m.content) for m in messages.data] == [(m["role"], m["content"]) for m in MESSAGES]
    assert client.chat.completions.update(kept.id, metadata={"run": "g2"}).metadata == {"run": "g2"}
    assert client.chat.completions.delete(kept.id).deleted
    assert [c.id for c in client.chat.completions.list(metadata={"run": "g1"}).data] == [chunks[0].id]


def test_upstream_errors_come_back_in_the_envelope_without_the_key(servers):
    _, gateway, fake = servers
    client = gateway.client()
    with pytest.raises(openai.AuthenticationError) as caught:  # the teacher refuses the wrong key
        ask(client, "wrong/tiny-llama", store=True)
    error = caught.value.response.json()["error"]
    assert error["code"] == "invalid_api_key" and error["message"].startswith("Upstream `wrong`: ")
    with pytest.raises(openai.AuthenticationError) as caught:  # an upstream quoting the key it got
        ask(client, "fake/echo-key")
    assert fake.seen[-1][1] == f"Bearer {FAKE_KEY}" and FAKE_KEY not in caught.value.response.text
    assert caught.value.response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.InternalServerError) as caught:  # not OpenAI's envelope: what came back
        ask(client, "fake/html-500")
    assert caught.value.status_code == 500 and "Upstream `fake` answered HTTP 500" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:  # an upstream name this gateway does not know
        ask(client, "nope/tiny-llama")
    assert caught.value.code == "model_not_found"

    flaky = ask(client, "fake/flaky", store=True, metadata={"run": "flaky"})  # a 503, then the answer
    assert flaky.choices[0].message.content == "second time lucky" and flaky.model == "fake/flaky"
    sent = fake.seen[-1][0]
    assert sent["model"] == "flaky" and "store" not in sent and "metadata" not in sent
    assert [c.id for c in client.chat.completions.list(metadata={"run": "flaky"}).data] == [flaky.id]
    assert client.chat.completions.list(model="wrong/tiny-llama").data == []


@pytest.mark.parametrize(
    ("model", "stream", "status", "says"),
    [
        ("down/tiny-llama", False, 502, "The upstream `down` cannot be reached"),
        ("down/tiny-llama", True, 502, "The upstream `down` cannot be reached"),
        ("fake/not-json", False, 502, "answered something that is not JSON"),
        ("fake/not-completion", False, 502, "answered JSON that is not a chat completion"),
        ("fake/not-json", True, 502, "instead of an event stream"),
        ("fake/slow", False, 504, "The upstream `fake` did not answer within 2 s"),
    ],
)
def test_an_unusable_upstream_is_a_clear_error_and_nothing_is_stored(servers, model, stream, status, says):
    client = servers[1].client()
    with pytest.raises(openai.APIStatusError) as caught:
        reply = ask(client, model, store=True, stream=stream)
        list(reply) if stream else None
    error = caught.value.response.json()["error"]
    assert caught.value.status_code == status and says in error["message"], error
    assert error["code"] == ("upstream_timeout" if status == 504 else "upstream_error")
    assert client.chat.completions.list(model=model).data == []


@pytest.mark.parametrize(("model", "says"), [("broken-stream", "not JSON"), ("truncated-stream", "before [DONE]")])
def test_a_broken_stream_ends_with_an_error_event_and_nothing_is_stored(servers, model, says):
    client = servers[1].client()
    stream = ask(client, f"fake/{model}", store=True, stream=True)
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            assert chunk.choices[0].delta.content == "Hello" and chunk.model == f"fake/{model}"
    assert says in caught.value.message
    assert client.chat.completions.list(model=f"fake/{model}").data == []
