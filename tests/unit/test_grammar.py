"""Constrained decoding on a toy vocabulary: schemas checked, masks applied to a row's logits,
greedy and sampled decoding both held to the grammar, only the end allowed once it is complete."""

from __future__ import annotations

import json

import llguidance
import pytest
import torch

from tuneloop.data.tools import format_tool_call
from tuneloop.engine.grammar import (
    FunctionSpec,
    GrammarConstraint,
    GrammarError,
    check_schema,
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)
from tuneloop.engine.sampling import Sampler, SamplingParams

PIECES = ["{", "}", "[", "]", '"', ":", ",", " ", "\n", ": ", ", ", "a", "b", "on", "true", "false", "null", "1",
          "2", '"on"', '"room"', "kitchen", "hall", "<", "tool", "_", "call", ">", "/", "name", "arguments", "x",
          "lights", "hello", " world", "set", *"abcdefghijklmnopqrstuvwxyz"]  # fmt: skip
EOS = 0


class ToyTokenizer:
    """A byte vocabulary with greedy longest-match tokenization (what llguidance's wrapper needs)."""

    eos_token_id, bos_token_id, special_token_ids = EOS, None, [EOS]

    def __init__(self):
        self.tokens = [b"<eos>"] + [p.encode() for p in PIECES]

    def __call__(self, text: bytes | str) -> list[int]:
        text = text.encode() if isinstance(text, str) else text
        out, i = [], 0
        while i < len(text):
            best = max((t for t, tok in enumerate(self.tokens) if t and text.startswith(tok, i)),
                       key=lambda t: len(self.tokens[t]))  # fmt: skip
            out.append(best)
            i += len(self.tokens[best])
        return out

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.tokens[i] for i in ids if i != EOS).decode()


TOY = ToyTokenizer()
LLTOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(TOY))
LIGHTS = {
    "type": "object",
    "properties": {"room": {"enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"],
}


def decode(spec, logits_for, params: SamplingParams, steps: int = 60) -> tuple[str, list[int]]:
    """Run a sampler with ``spec``'s constraint over logits from ``logits_for(step)``."""
    sampler = Sampler(params, {EOS}, GrammarConstraint(LLTOKENIZER, spec))
    tokens = []
    for step in range(steps):
        logits = logits_for(step)
        token = sampler.choose(logits, int(logits.argmax())).token
        tokens.append(token)
        if token == EOS:
            break
    return TOY.decode(tokens), tokens


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoding_follows_the_schema_then_ends(temperature):
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        text, tokens = decode(
            json_schema_grammar(LIGHTS), lambda _, gen=gen: torch.randn(len(TOY.tokens), generator=gen) * 5,
            SamplingParams(temperature=temperature, seed=seed),
        )  # fmt: skip
        assert tokens[-1] == EOS and EOS not in tokens[:-1]
        value = json.loads(text)
        assert value["room"] in ("kitchen", "hall") and isinstance(value["on"], bool) and set(value) == {"room", "on"}
        assert text == json.dumps(value)  # json.dumps' layout, the one tool calls are trained in


def test_once_complete_only_the_end_is_allowed():
    constraint = GrammarConstraint(LLTOKENIZER, json_schema_grammar({"enum": ["hello"]}))
    for token in TOY(b'"hello"'):
        assert constraint.compute() and constraint.allows(token)
        constraint.advance(token)
    assert constraint.done and constraint.compute()
    assert [t for t in range(len(TOY.tokens)) if constraint.allows(t)] == [EOS]
    restricted = constraint.restrict(torch.zeros(len(TOY.tokens) + 3))  # a wider head: extra rows masked too
    assert torch.isfinite(restricted).nonzero().flatten().tolist() == [EOS]


def test_greedy_uses_the_batch_argmax_only_when_the_grammar_allows_it():
    logits = torch.zeros(len(TOY.tokens))
    logits[TOY(b"hello")[0]] = 10.0  # the model's favourite is not a JSON start
    text, _ = decode(json_object_grammar(), lambda _: logits, SamplingParams(temperature=0.0), steps=3)
    assert text.startswith("{")
    free = Sampler(SamplingParams(temperature=0.0), {EOS})
    assert free.choose(logits, best=5).token == 5  # unconstrained rows: the hint, untouched


def test_json_object_mode_is_any_object():
    constraint = GrammarConstraint(LLTOKENIZER, json_object_grammar())
    assert constraint.matcher.consume_tokens(TOY(b'{"x": [1, null], "a": {"b": "on"}}'))
    assert constraint.matcher.is_accepting()


def test_supported_schemas_are_checked_and_objects_closed():
    schema = {"$defs": {"r": {"type": "object", "properties": {"a": {"type": "string"}}}},
              "type": "object", "properties": {"r": {"$ref": "#/$defs/r"}, "n": {"anyOf": [{"type": "integer"},
              {"type": "null"}], "title": "N"}}, "required": ["r", "n"]}  # fmt: skip
    checked = check_schema(schema)
    assert checked["additionalProperties"] is False and checked["$defs"]["r"]["additionalProperties"] is False
    assert check_schema({"type": "object"}) == {"type": "object"}  # no properties named: any object
    assert check_schema({"type": "object", "additionalProperties": True})["additionalProperties"] is True


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"not": {}}}},
            "In context=('properties', 'a'), 'not' is not permitted",
        ),
        ({"oneOf": [{"type": "string"}]}, "'oneOf' is not permitted"),
        ({"type": "wat"}, "'type' must be one of"),
        ({"anyOf": []}, "'anyOf' must be a non-empty list"),
        ({"properties": {"a": 3}}, "a schema must be a JSON object"),
        ([1], "the schema must be a JSON object"),
        ({"$ref": "https://example.com/s.json"}, "'$ref' must point into this schema"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
        ({"type": "string", "pattern": "[a-"}, "regex"),
    ],
)
def test_unsupported_or_invalid_schemas_name_the_construct(schema, message):
    with pytest.raises(GrammarError) as err:
        json_schema_grammar(schema)
    assert message in str(err.value)


def test_required_tool_calls_name_a_function_with_valid_arguments():
    functions = [FunctionSpec("lights", LIGHTS), FunctionSpec("set")]
    spec = tool_call_grammar(functions, required=True, parallel=False)
    gen = torch.Generator().manual_seed(0)
    text, tokens = decode(spec, lambda _: torch.randn(len(TOY.tokens), generator=gen), SamplingParams(), steps=200)
    assert tokens[-1] == EOS
    call = text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
    assert text == format_tool_call(json.loads(call)["name"], json.loads(call)["arguments"])  # the trained format
    assert json.loads(call)["name"] in ("lights", "set")
    constraint = GrammarConstraint(LLTOKENIZER, spec)  # only one call without parallel calls
    assert constraint.matcher.consume_tokens(TOY(format_tool_call("set", {}).encode()))
    assert constraint.compute() and [t for t in range(len(TOY.tokens)) if constraint.allows(t)] == [EOS]


def test_auto_tool_choice_is_free_until_a_call_opens():
    spec = tool_call_grammar([FunctionSpec("lights", LIGHTS)], required=False, parallel=True)
    constraint = GrammarConstraint(LLTOKENIZER, spec)
    assert constraint.matcher.consume_tokens(TOY(b"hello world\n"))
    assert constraint.compute() and constraint.allows(TOY(b"x")[0]) and constraint.allows(EOS)
    assert constraint.matcher.consume_tokens(TOY(b"<tool_call>"))
    assert constraint.compute() and [t for t in range(len(TOY.tokens)) if constraint.allows(t)] == TOY(b"\n")
    call = format_tool_call("lights", {"room": "hall", "on": False}).removeprefix("<tool_call>")
    assert constraint.matcher.consume_tokens(TOY(call.encode()))
    assert constraint.compute() and constraint.allows(EOS) and not constraint.allows(TOY(b"x")[0])


def test_auto_tool_choice_with_an_answer_schema():
    spec = tool_call_grammar([FunctionSpec("set")], required=False, parallel=False, answer=check_schema(LIGHTS))
    answer = GrammarConstraint(LLTOKENIZER, spec)
    assert answer.matcher.consume_tokens(TOY(json.dumps({"room": "hall", "on": True}).encode()))
    assert answer.matcher.is_accepting()
    call = GrammarConstraint(LLTOKENIZER, spec)
    assert call.matcher.consume_tokens(TOY(format_tool_call("set", {}).encode())) and call.matcher.is_accepting()
    free = GrammarConstraint(LLTOKENIZER, spec)
    assert not free.matcher.consume_tokens(TOY(b"hello"))
