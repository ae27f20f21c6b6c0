"""The wire shapes over HTTP: the official client and raw JSON agree with OpenAI's, and chat and
completions validate alike (one sampling base, one ``model_not_found``)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess

USER = [{"role": "user", "content": "Tell me something."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("protocol-home")
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    srv = ServerProcess(home, "--no-worker").wait_ready()
    yield srv
    srv.stop()


def _post(server, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=60)


def test_completions_apply_chats_stop_limit(server):
    client = server.client()
    for stop in (["a", "b", "c", "d", "e"], [""]):
        with pytest.raises(openai.BadRequestError) as chat_err:
            client.chat.completions.create(model="tiny-llama", messages=USER, max_tokens=2, stop=stop)
        with pytest.raises(openai.BadRequestError) as completion_err:
            client.completions.create(model="tiny-llama", prompt="Once", max_tokens=2, stop=stop)
        for err in (chat_err, completion_err):
            assert err.value.body["message"] == "'stop' takes up to 4 non-empty strings." and err.value.param == "stop"
    ok = client.completions.create(model="tiny-llama", prompt="Once", max_tokens=2, stop=["a", "b", "c", "d"])
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_unknown_model_is_one_404_everywhere(server):
    client = server.client()
    calls = [
        lambda: client.chat.completions.create(model="no-such-model", messages=USER),
        lambda: client.completions.create(model="no-such-model", prompt="hi"),
        lambda: client.models.retrieve("no-such-model"),
        lambda: client.models.delete("no-such-model"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body == {
            "message": "The model `no-such-model` does not exist or you do not have access to it.",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found",
        }  # fmt: skip


def test_raw_json_of_replies_and_chunks(server):
    reply = _post(server, "/chat/completions", {"model": "tiny-llama", "messages": USER, "max_tokens": 3}).json()
    assert list(reply) == ["id", "created", "model", "object", "choices", "usage", "system_fingerprint"]
    assert reply["choices"][0]["message"]["refusal"] is None and reply["choices"][0]["logprobs"] is None
    assert set(reply["usage"]["prompt_tokens_details"]) == {"cached_tokens"}
    body = {"model": "tiny-llama", "messages": USER, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    lines = [line for line in _post(server, "/chat/completions", body).text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None and c["system_fingerprint"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-2]["choices"][0]["delta"] == {} and chunks[-2]["choices"][0]["finish_reason"] == "length"
    completion = _post(server, "/completions", {"model": "tiny-llama", "prompt": "Once", "max_tokens": 3}).json()
    assert list(completion) == ["id", "created", "model", "object", "choices", "usage"]
    assert list(completion["usage"]) == ["prompt_tokens", "completion_tokens", "total_tokens"]
    assert completion["choices"][0]["logprobs"] is None
    body = {"model": "tiny-llama", "prompt": "Once", "max_tokens": 3, "stream": True}
    lines = [line for line in _post(server, "/completions", body).text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert list(last) == ["id", "created", "model", "object", "choices"]
    assert last["choices"] == [{"index": 0, "text": "", "finish_reason": "length", "logprobs": None}]


def test_completion_logprobs(server):
    r = server.client().completions.create(model="tiny-llama", prompt="Once", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    assert all(len(top) <= 2 for top in lp.top_logprobs)
