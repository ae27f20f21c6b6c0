"""Agent libraries against the server, on their default paths: LangChain's ``bind_tools`` and
``with_structured_output`` and LiteLLM's ``completion`` get parsed tool calls and schema-valid
structured outputs, streamed and not (the tiny random model, constrained)."""

from __future__ import annotations

import json
import os
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of LiteLLM's price list
PROMPT = "Turn on the kitchen lights."


class set_lights(BaseModel):  # noqa: N801 - LangChain names the tool after the class
    """Switch the lights of a room."""

    room: Literal["kitchen", "hall", "bedroom"]
    on: bool


class Room(BaseModel):
    name: Literal["kitchen", "hall"]
    lights_on: bool


class Plan(BaseModel):
    """A plan for the house."""

    rooms: list[Room] = Field(max_length=2)
    confirm: bool


LIGHTS_TOOL = {
    "type": "function",
    "function": {
        "name": "set_lights",
        "description": "Switch the lights of a room.",
        "parameters": set_lights.model_json_schema(),
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("clients-home")
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    srv = ServerProcess(home, "--no-worker").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def chat(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=server.base_url, api_key="test", model="tiny-llama", temperature=0, max_tokens=150)


def assert_lights_call(name: str, arguments: dict) -> None:
    assert name == "set_lights"
    set_lights.model_validate(arguments)
    jsonschema.validate(arguments, set_lights.model_json_schema())


@pytest.mark.parametrize("stream", [False, True])
def test_langchain_bind_tools_gets_a_parsed_call(chat, stream):
    bound = chat.bind_tools([set_lights], tool_choice="set_lights", parallel_tool_calls=False)
    if stream:
        chunks = list(bound.stream(PROMPT))
        message = chunks[0]
        for chunk in chunks[1:]:
            message = message + chunk
    else:
        message = bound.invoke(PROMPT)
    assert len(message.tool_calls) == 1 and not message.invalid_tool_calls
    call = message.tool_calls[0]
    assert call["id"].startswith("call_")
    assert_lights_call(call["name"], call["args"])
    if not stream:
        assert message.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_any_tool_choice(chat):
    message = chat.bind_tools([set_lights], tool_choice="any", parallel_tool_calls=False).invoke(PROMPT)
    assert_lights_call(message.tool_calls[0]["name"], message.tool_calls[0]["args"])


@pytest.mark.parametrize("stream", [False, True])
def test_langchain_with_structured_output_gives_the_model(chat, stream):
    structured = chat.with_structured_output(Plan)  # its default method: response_format json_schema
    if stream:
        results = list(structured.stream("Plan the evening."))
        plan = results[-1]
    else:
        plan = structured.invoke("Plan the evening.")
    assert isinstance(plan, Plan)


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_completion_gets_a_tool_call(server, stream):
    import litellm

    kw = {
        "model": "openai/tiny-llama", "api_base": server.base_url, "api_key": "test", "max_tokens": 150,
        "messages": [{"role": "user", "content": PROMPT}], "tools": [LIGHTS_TOOL], "temperature": 0,
        "tool_choice": {"type": "function", "function": {"name": "set_lights"}}, "parallel_tool_calls": False,
    }  # fmt: skip
    if stream:
        chunks = list(litellm.completion(**kw, stream=True))
        response = litellm.stream_chunk_builder(chunks, messages=kw["messages"])
    else:
        response = litellm.completion(**kw)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert_lights_call(call.function.name, json.loads(call.function.arguments))


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_structured_output(server, stream):
    import litellm

    kw = {
        "model": "openai/tiny-llama", "api_base": server.base_url, "api_key": "test", "max_tokens": 150,
        "messages": [{"role": "user", "content": "Plan the evening."}], "response_format": Plan, "temperature": 0,
    }  # fmt: skip
    if stream:
        chunks = list(litellm.completion(**kw, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = litellm.completion(**kw).choices[0].message.content
    Plan.model_validate_json(text)
