"""Tool calls: one format for training and serving, parsed back whole or as it streams, and the
request's tools, tool choice and history validated with OpenAI's 400s."""

from __future__ import annotations

import json

import pytest

from tuneloop.api.errors import APIError
from tuneloop.api.protocol import ChatRequest
from tuneloop.api.tool_calls import ChoiceOutput
from tuneloop.data.render import ChatRenderer
from tuneloop.data.tools import ArgumentsPiece, CallStart, ContentPiece, ToolCallParser, parse_tool_calls

CALLS = [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "n": [1]}'}},
    {"id": "c2", "type": "function", "function": {"name": "set_lights", "arguments": '{"on": true, "note": "}\\""}'}},
]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
USER = [{"role": "user", "content": "hi"}]


def rendered_answer(tokenizer, content: str | None) -> str:
    """The assistant turn of a training example with calls, as the renderer writes it."""
    renderer = ChatRenderer(tokenizer)
    messages = [*USER, {"role": "assistant", "content": content, "tool_calls": CALLS}]
    before = renderer.text(USER, [TOOL], add_generation_prompt=True)
    full = renderer.text(messages, [TOOL])
    assert full.startswith(before)
    return full[len(before) :].removesuffix("<|im_end|>\n")


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.mark.parametrize("content", [None, "Let me check."])
def test_what_training_renders_serving_parses_back(tokenizer, content):
    text = rendered_answer(tokenizer, content)
    assert text.count("<tool_call>\n{") == 2
    parsed_content, calls = parse_tool_calls(text)
    assert parsed_content == (content or "")
    assert [(c.name, json.loads(c.arguments), c.complete) for c in calls] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"]), True) for c in CALLS
    ]
    assert calls[0].arguments == '{"city": "Paris", "n": [1]}'  # the generated text itself, not re-encoded


def test_streaming_a_character_at_a_time_gives_the_same_pieces(tokenizer):
    text = rendered_answer(tokenizer, "Sure.\nOne moment")
    parser, pieces = ToolCallParser(), []
    for c in text:
        pieces += parser.feed(c)
    pieces += parser.finish()
    content = "".join(p.text for p in pieces if isinstance(p, ContentPiece))
    assert content == "Sure.\nOne moment"
    starts = [p for p in pieces if isinstance(p, CallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "set_lights")]
    args = ["".join(p.text for p in pieces if isinstance(p, ArgumentsPiece) and p.index == i) for i in (0, 1)]
    assert args == [c.arguments for c in parse_tool_calls(text)[1]]
    first_args = next(i for i, p in enumerate(pieces) if isinstance(p, ArgumentsPiece))
    assert isinstance(pieces[first_args - 1], CallStart)  # the name comes before any argument


def test_text_without_calls_and_calls_cut_short():
    assert parse_tool_calls("a <tool b\n") == ("a <tool b\n", [])
    content, calls = parse_tool_calls('Hi\n<tool_call>\n{"name": "f", "arguments": {"a": "x')
    assert content == "Hi" and [(c.name, c.arguments, c.complete) for c in calls] == [("f", '{"a": "x', False)]
    assert parse_tool_calls('<tool_call>\n{"na') == ("", [])  # cut before the name: nothing to call
    other_order = '<tool_call>{"arguments": {"x": 1}, "name": "g"}</tool_call>'
    assert [(c.name, c.arguments) for c in parse_tool_calls(other_order)[1]] == [("g", '{"x": 1}')]


def test_choice_output_streams_openai_deltas_and_builds_the_message():
    out = ChoiceOutput(tools=True)
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    deltas = [d.model_dump(exclude_none=True) for piece in (text[:30], text[30:]) for d in out.deltas(piece)]
    deltas += [d.model_dump(exclude_none=True) for d in out.finish()]
    call_id = out.ids[0]
    assert call_id.startswith("call_") and len(call_id) == 29
    assert deltas == [
        {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Rome"}'}}]},
    ]  # fmt: skip
    message = out.message()
    assert message.content is None and message.tool_calls[0].id == call_id
    assert message.tool_calls[0].function.arguments == '{"city": "Rome"}'
    assert out.finish_reason("stop") == "tool_calls" and out.finish_reason("length") == "length"
    plain = ChoiceOutput(tools=False)
    assert [d.content for d in plain.deltas("<tool_call>")] == ["<tool_call>"]
    assert plain.message().content == "<tool_call>" and plain.finish_reason("stop") == "stop"


def request(**kw) -> ChatRequest:
    return ChatRequest(model="m", **{"messages": USER, **kw})


def error_of(req: ChatRequest, method: str = "grammar") -> APIError:
    with pytest.raises(APIError) as err:
        getattr(req, method)()
    assert err.value.status == 400
    return err.value


def test_tool_choice_and_schemas_are_validated():
    assert request(tools=[TOOL]).grammar().kind == "tool_calls"
    assert request(tools=[TOOL], tool_choice="none").grammar() is None
    assert request(tools=[TOOL], tool_choice="none", response_format={"type": "json_object"}).grammar().kind == (
        "json_object"
    )
    named = {"type": "function", "function": {"name": "nope"}}
    assert error_of(request(tools=[TOOL], tool_choice=named)).param == "tool_choice"
    assert error_of(request(tool_choice="auto")).param == "tool_choice"
    assert error_of(request(parallel_tool_calls=False)).param == "parallel_tool_calls"
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "if": {}}}}
    err = error_of(request(tools=[TOOL, bad]))
    assert err.param == "tools[1].function.parameters" and err.code == "invalid_function_parameters"
    assert "'if' is not permitted" in err.message
    assert error_of(request(tools=[TOOL, TOOL])).param == "tools[1].function.name"
    renamed = {"type": "function", "function": {"name": "no spaces"}}
    assert error_of(request(tools=[renamed])).param == "tools[0].function.name"
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "allOf": []}}}
    err = error_of(request(response_format=fmt))
    assert err.param == "response_format" and "'allOf' is not permitted" in err.message


def test_history_with_calls_and_results():
    messages = [*USER, {"role": "assistant", "tool_calls": CALLS}, {"role": "tool", "tool_call_id": "c2",
                "content": "ok"}]  # fmt: skip
    rendered = request(messages=messages).rendered_messages()
    assert rendered[1]["tool_calls"][0]["function"]["name"] == "get_weather" and rendered[1]["content"] == ""
    assert rendered[2] == {"role": "tool", "content": "ok", "tool_call_id": "c2"}
    orphan = [*USER, {"role": "tool", "tool_call_id": "c9", "content": "ok"}, *messages[1:]]
    err = error_of(request(messages=orphan), "rendered_messages")
    assert err.param == "messages[1].tool_call_id" and "'c9'" in err.message
    calls_from_user = [{"role": "user", "content": "x", "tool_calls": CALLS}]
    assert error_of(request(messages=calls_from_user), "rendered_messages").param == "messages[0].tool_calls"
