"""Tools and structured outputs over HTTP with the official client: the tiny random model answers
schema-valid JSON and well-formed tool calls only because decoding is constrained."""

from __future__ import annotations

import json
import shutil
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from chat_templates import LLAMA, MISTRAL
from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess

USER = [{"role": "user", "content": "Turn on the kitchen lights and tell me the weather."}]
LIGHTS = {
    "type": "function",
    "function": {
        "name": "set_lights",
        "description": "Switch the lights of a room.",
        "parameters": {
            "type": "object",
            "properties": {
                "room": {"type": "string", "enum": ["kitchen", "hall", "bedroom"]},
                "on": {"type": "boolean"},
            },
            "required": ["room", "on"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}, "unit": {"$ref": "#/$defs/unit"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [LIGHTS, WEATHER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


class Room(BaseModel):
    name: Literal["kitchen", "hall"]
    lights_on: bool


class Plan(BaseModel):
    rooms: list[Room] = Field(max_length=2)
    mode: Literal["away", "home"] | None
    confirm: bool


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("tools-home")
    catalog = Catalog(Settings(home=home))
    catalog.add("tiny-llama", tiny_model_dir)
    for name, template in (("tiny-llama-json", LLAMA), ("tiny-mistral", MISTRAL)):  # templates that render tools
        folder = tmp_path_factory.mktemp(name)
        shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
        (folder / "chat_template.jinja").write_text(template)
        catalog.add(name, folder)
    srv = ServerProcess(home, "--no-worker").wait_ready()
    yield srv
    srv.stop()


def assert_valid_calls(calls, names=None) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_json_schema_parsed_into_a_pydantic_model(server):
    client = server.client()
    for seed in range(3):
        r = client.chat.completions.parse(
            model="tiny-llama", messages=USER, response_format=Plan, temperature=1.0, seed=seed, max_tokens=200
        )
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(r.choices[0].message.parsed, Plan)
        assert json.loads(r.choices[0].message.content) == r.choices[0].message.parsed.model_dump()


def test_json_schema_streamed_is_schema_valid(server):
    schema = Plan.model_json_schema()
    response_format = {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema}}
    chunks = list(
        server.client().chat.completions.create(
            model="tiny-llama", messages=USER, response_format=response_format, temperature=0, max_tokens=200,
            stream=True,
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    Plan.model_validate_json(text)
    with server.client().chat.completions.stream(
        model="tiny-llama", messages=USER, response_format=Plan, temperature=0, max_tokens=200
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Plan.model_validate_json(text)


def test_json_object_mode_gives_an_object(server):
    r = server.client().chat.completions.create(
        model="tiny-llama", messages=USER, response_format={"type": "json_object"}, temperature=0.7, seed=1,
        max_tokens=40,
    )  # fmt: skip
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_required_tool_choice_gives_schema_valid_calls(server, temperature):
    kw = {"model": "tiny-llama", "messages": USER, "tools": TOOLS, "tool_choice": "required",
          "temperature": temperature, "seed": 3, "max_tokens": 120}  # fmt: skip
    one = server.client().chat.completions.create(**kw, parallel_tool_calls=False).choices[0]
    assert one.finish_reason == "tool_calls" and one.message.content is None
    assert len(one.message.tool_calls) == 1
    assert_valid_calls(one.message.tool_calls)
    # parallel calls: a random model may call until max_tokens; every call it completes is valid
    several = server.client().chat.completions.create(**kw).choices[0]
    assert several.finish_reason in ("tool_calls", "length") and several.message.content is None
    assert_valid_calls(several.message.tool_calls)


def test_named_function_and_one_call_without_parallel_calls(server):
    r = server.client().chat.completions.create(
        model="tiny-llama", messages=USER, tools=TOOLS, temperature=1.0, seed=0, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False,
    )  # fmt: skip
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert_valid_calls(calls)


def test_auto_tool_choice_answers_text_or_valid_calls(server):
    for seed in range(3):
        r = server.client().chat.completions.create(
            model="tiny-llama", messages=USER, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=40
        )
        message = r.choices[0].message
        if message.tool_calls:
            assert r.choices[0].finish_reason in ("tool_calls", "length")
        else:
            assert isinstance(message.content, str) and r.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_calls_assemble_to_the_same_calls(server):
    client = server.client()
    kw = {"model": "tiny-llama", "messages": USER, "tools": TOOLS, "tool_choice": "required", "temperature": 0,
          "max_tokens": 120}  # fmt: skip
    whole = client.chat.completions.create(**kw)
    assert len(whole.choices[0].message.tool_calls) > 1  # several calls, the last one cut short
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for part in chunk.choices[0].delta.tool_calls or []:
            if part.id is not None:  # a call's first chunk: id, type, name, empty arguments
                assert part.index not in calls and part.type == "function" and part.function.arguments == ""
                calls[part.index] = {"id": part.id, "name": part.function.name, "arguments": ""}
            else:
                assert part.function.name is None
                calls[part.index]["arguments"] += part.function.arguments
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].delta.content is None for c in chunks)
    expected = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == expected
    one = client.chat.completions.create(**kw, parallel_tool_calls=False).choices[0]
    with client.chat.completions.stream(**kw, parallel_tool_calls=False) as stream:  # the client's own accumulation
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == one.finish_reason == "tool_calls" and final.message.content is None
    streamed = [(c.function.name, c.function.arguments) for c in final.message.tool_calls]
    assert streamed == [(c.function.name, c.function.arguments) for c in one.message.tool_calls]


@pytest.mark.parametrize("model", ["tiny-llama-json", "tiny-mistral"])
def test_templates_with_their_own_call_syntax_serve_parsed_calls(server, model):
    client = server.client()
    kw = {"model": model, "messages": USER, "tools": TOOLS, "tool_choice": "required", "temperature": 0,
          "max_tokens": 120, "parallel_tool_calls": False}  # fmt: skip
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    assert len(whole.message.tool_calls) == 1
    assert_valid_calls(whole.message.tool_calls)
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion().choices[0]
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls
    ]
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "set_lights",
                                                          "arguments": '{"room": "kitchen", "on": true}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}]  # fmt: skip
    named = {"type": "function", "function": {"name": "get_weather"}}
    again = client.chat.completions.create(**{**kw, "messages": history, "tool_choice": named}).choices[0]
    assert [c.function.name for c in again.message.tool_calls] == ["get_weather"]


def test_tool_results_in_the_history(server):
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "set_lights",
                                                              "arguments": '{"room": "kitchen", "on": true}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]  # fmt: skip
    r = server.client().chat.completions.create(model="tiny-llama", messages=messages, tools=TOOLS, max_tokens=5)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def bad_request(server, **kw) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="tiny-llama", max_tokens=5, **{"messages": USER, **kw})
    body = err.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    return err.value


def test_bad_tools_and_schemas_are_400s(server):
    err = bad_request(server, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert err.param == "tool_choice" and "'nope'" in err.message
    broken = {"type": "function", "function": {"name": "f", "parameters": {"type": "wat"}}}
    err = bad_request(server, tools=[LIGHTS, broken])
    assert err.param == "tools[1].function.parameters" and "wat" in err.message
    unsupported = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}
    err = bad_request(server, tools=[unsupported], tool_choice="required")
    assert err.param == "tools[0].function.parameters" and "'not' is not permitted" in err.message
    err = bad_request(server, tool_choice="required")
    assert err.param == "tool_choice"
    orphan = [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "21C"}]
    err = bad_request(server, messages=orphan, tools=TOOLS)
    assert err.param == "messages[1].tool_call_id" and "call_x" in err.message
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "patternProperties": {"^x": {}}}
    err = bad_request(server, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert err.param == "response_format" and err.code == "invalid_json_schema"
    assert "'patternProperties' is not permitted" in err.message
    ref = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    err = bad_request(server, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": ref}})
    assert err.param == "response_format" and "missing" in err.message
