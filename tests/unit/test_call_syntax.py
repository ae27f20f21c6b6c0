"""Templates that render tools themselves: their own call syntax is recognised, trained on, parsed
back and constrained (Hermes/Qwen tags, Llama 3.1 JSON, Mistral's ``[TOOL_CALLS]`` list, that one
also as a special token); a syntax tuneloop cannot parse falls back to the documented default."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from chat_templates import LLAMA, MISTRAL, QWEN, UNKNOWN
from tuneloop.data.render import ChatRenderer
from tuneloop.data.tools import (
    HERMES,
    LLAMA3_JSON,
    ArgumentsPiece,
    CallStart,
    ContentPiece,
    ToolCallParser,
    parse_tool_calls,
)
from tuneloop.data.tools import MISTRAL as MISTRAL_SYNTAX
from tuneloop.engine.grammar import FunctionSpec, GrammarConstraint, grammar_tokenizer, tool_call_grammar

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"], "additionalProperties": False}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "lights_off", "parameters": {"type": "object", "properties": {}}}},
]
CALL = {"id": "call_Zx81", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SECOND = {"id": "call_Q2", "type": "function", "function": {"name": "lights_off", "arguments": "{}"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def base_tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def with_template(tokenizer, template: str, special: tuple[str, ...] = ()):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    if special:
        tok.add_special_tokens({"additional_special_tokens": list(special)})
    return tok


def served_text(tok, calls: list[dict]) -> str:
    """The assistant turn as training renders it, decoded the way serving decodes generated tokens."""
    renderer = ChatRenderer(tok)
    rendered = renderer.render([*USER, {"role": "assistant", "content": None, "tool_calls": calls}], TOOLS)
    trained = [t for t, m in zip(rendered.input_ids, rendered.mask, strict=True) if m]
    return tok.decode(trained, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("template", "special", "name", "parallel"),
    [
        (QWEN, (), "hermes", True),
        (LLAMA, (), "llama3_json", False),
        (MISTRAL, (), "mistral", True),
        (MISTRAL, ("[TOOL_CALLS]",), "mistral", True),
    ],  # fmt: skip
    ids=["qwen", "llama", "mistral", "mistral-special-token"],
)
def test_training_renders_calls_in_the_template_syntax_and_serving_parses_them_back(
    base_tokenizer, template, special, name, parallel
):
    tok = with_template(base_tokenizer, template, special)
    renderer = ChatRenderer(tok)
    assert renderer.native_tools and renderer.syntax.name == name
    assert (renderer.syntax.opener_token is not None) == bool(special)
    calls = [CALL, SECOND] if parallel else [CALL]
    text = served_text(tok, calls)
    content, parsed = parse_tool_calls(text, renderer.syntax)
    assert content.strip() == ""
    assert [(c.name, json.loads(c.arguments), c.complete) for c in parsed] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"]), True) for c in calls
    ]
    parser, pieces = ToolCallParser(renderer.syntax), []  # streamed a character at a time: the same
    for ch in text:
        pieces += parser.feed(ch)
    pieces += parser.finish()
    assert [p.name for p in pieces if isinstance(p, CallStart)] == [c.name for c in parsed]
    assert "".join(p.text for p in pieces if isinstance(p, ArgumentsPiece)) == "".join(c.arguments for c in parsed)
    assert "".join(p.text for p in pieces if isinstance(p, ContentPiece)).strip() == ""


def test_the_prompt_and_history_use_the_template_and_mistral_ids_are_shortened(base_tokenizer):
    tok = with_template(base_tokenizer, MISTRAL)
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
               {"role": "tool", "tool_call_id": CALL["id"], "content": "18 C"}]  # fmt: skip
    text = ChatRenderer(tok).text(history, TOOLS, add_generation_prompt=True)
    assert text.startswith("[AVAILABLE_TOOLS] [") and "[TOOL_CALLS] [" in text
    short = json.loads(text.split("[TOOL_RESULTS] ")[1].removesuffix("[/TOOL_RESULTS]"))["call_id"]
    assert len(short) == 9 and short.isalnum() and f'"id": "{short}"' in text  # the call and its result agree
    assert '"arguments": {"city": "Paris"}' in text  # OpenAI's JSON string given to the template as a value


def test_a_syntax_tuneloop_cannot_parse_falls_back_to_the_default(base_tokenizer):
    renderer = ChatRenderer(with_template(base_tokenizer, UNKNOWN))
    assert not renderer.native_tools and renderer.syntax == HERMES
    text = renderer.text([*USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}], TOOLS)
    assert "<tool_call>" in text and "<call name" not in text and "get_weather" in text.split("<|im_end|>")[0]


def test_untagged_answers_that_are_not_calls_are_text():
    special = dataclasses.replace(MISTRAL_SYNTAX, opener_token=7)  # [TOOL_CALLS] a special token: not in the text
    assert parse_tool_calls("The weather is fine.", LLAMA3_JSON) == ("The weather is fine.", [])
    assert parse_tool_calls('  {"city": 1}', LLAMA3_JSON) == ('  {"city": 1}', [])
    assert parse_tool_calls("{not json", LLAMA3_JSON) == ("{not json", [])
    assert parse_tool_calls("[1, 2]", special) == ("[1, 2]", [])
    content, calls = parse_tool_calls(
        '{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}', LLAMA3_JSON
    )
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("f", '{"a": 1}'), ("g", "{}")]
    content, calls = parse_tool_calls(
        'Sure. [TOOL_CALLS] [{"name": "f", "arguments": {}, "id": "a1b2c3d4e"}]', MISTRAL_SYNTAX
    )
    assert content == "Sure. " and [(c.name, c.arguments, c.complete) for c in calls] == [("f", "{}", True)]


@pytest.mark.parametrize(
    ("template", "special"),
    [(QWEN, ()), (LLAMA, ()), (MISTRAL, ()), (MISTRAL, ("[TOOL_CALLS]",))],
    ids=["qwen", "llama", "mistral", "mistral-special-token"],
)
def test_the_grammar_accepts_exactly_the_template_syntax(base_tokenizer, template, special):
    tok = with_template(base_tokenizer, template, special)
    syntax = ChatRenderer(tok).syntax
    lltok = grammar_tokenizer(tok, len(tok), {tok.eos_token_id})
    functions = [FunctionSpec(t["function"]["name"], t["function"]["parameters"]) for t in TOOLS]
    rendered = ChatRenderer(tok).render([*USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}], TOOLS)
    answer = [t for t, m in zip(rendered.input_ids, rendered.mask, strict=True) if m][:-1]  # without the turn end
    answer = answer if answer[-1] != tok.eos_token_id else answer[:-1]
    for required in (True, False):
        constraint = GrammarConstraint(lltok, tool_call_grammar(functions, required=required, parallel=True,
                                                                syntax=syntax))  # fmt: skip
        assert constraint.matcher.consume_tokens(answer), tok.decode(answer)
        assert constraint.compute() and constraint.allows(tok.eos_token_id)
        wrong = tok.decode(answer).replace("get_weather", "get_wether")
        bad = GrammarConstraint(lltok, tool_call_grammar(functions, required=required, parallel=True, syntax=syntax))
        ids = tok(wrong, add_special_tokens=False)["input_ids"]
        if special:
            ids = [tok.convert_tokens_to_ids("[TOOL_CALLS]")] + tok(wrong, add_special_tokens=False)["input_ids"]
        assert not bad.matcher.consume_tokens(ids) or not bad.matcher.is_accepting()
    if syntax.leading:  # free text under auto: any text that does not start like a call
        auto = GrammarConstraint(lltok, tool_call_grammar(functions, required=False, parallel=True, syntax=syntax))
        assert auto.matcher.consume_tokens(tok("It is sunny.", add_special_tokens=False)["input_ids"])
        assert auto.matcher.is_accepting()
