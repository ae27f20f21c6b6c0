"""Constrained decoding: a request's output held to a JSON schema or to the tool-call format.

A :class:`GrammarSpec` is built per request from what it asks for (``json_object``, a JSON schema,
tools with a ``tool_choice``) and checked before anything is queued; the engine turns it into a
:class:`GrammarConstraint`, which the request's sampler consults at every step: the tokens the
grammar allows next (a bitmask over the vocabulary, computed by llguidance in 16–55 µs a token on
SmolLM2's 49,152 tokens, see ``benchmarks/grammar_mask.py``), then the chosen token to advance it.
Once the grammar is complete only an end-of-sequence token remains allowed. Only constrained rows
compute masks, and a mask touches only its own row's logits.

JSON is constrained to ``json.dumps``' layout (``", "`` and ``": "``, no other whitespace), the
layout the training data's tool calls are rendered in (``data/tools.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from tuneloop.data.tools import HERMES, CallSyntax
from tuneloop.errors import TuneloopError

_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
#: OpenAI's Structured Outputs subset, plus string lengths (llguidance enforces them too).
_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minItems", "maxItems", "minLength", "maxLength",
}  # fmt: skip
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly"}  # fmt: skip
_NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


class GrammarError(TuneloopError):
    """A schema or grammar that cannot constrain decoding; the message names the construct."""


# --- checking schemas --------------------------------------------------------------------------------


def check_schema(schema: Any) -> dict:
    """``schema`` checked against the supported subset of JSON Schema (a GrammarError naming the first
    construct outside it), ready to constrain decoding: an object that lists ``properties`` without
    saying ``additionalProperties`` gets no others (as OpenAI's strict mode requires, and as
    xgrammar's strict mode in vLLM does), so a model never invents keys a schema does not name."""
    if not isinstance(schema, dict):
        raise GrammarError(f"the schema must be a JSON object, not {type(schema).__name__}")
    return _checked(schema, ())


def _fail(path: tuple, message: str) -> GrammarError:
    return GrammarError(f"In context={path!r}, {message}")


def _checked(node: Any, path: tuple) -> dict:  # noqa: C901 - one check per keyword
    if not isinstance(node, dict):
        raise _fail(path, f"a schema must be a JSON object, not {json.dumps(node)}")
    out = dict(node)
    for key, value in node.items():
        where = (*path, key)
        if key not in _KEYWORDS and key not in _ANNOTATIONS:
            raise _fail(path, f"'{key}' is not permitted (supported: {', '.join(sorted(_KEYWORDS))})")
        if key == "type":
            types = value if isinstance(value, list) else [value]
            if not types or any(t not in _TYPES for t in types):
                raise _fail(path, f"'type' must be one of {sorted(_TYPES)} or a list of them, not {json.dumps(value)}")
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise _fail(path, f"'{key}' must be an object mapping names to schemas")
            out[key] = {name: _checked(sub, (*where, name)) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and not isinstance(value, bool)):
            out[key] = _checked(value, where)
        elif key == "anyOf":
            if not isinstance(value, list) or not value:
                raise _fail(path, "'anyOf' must be a non-empty list of schemas")
            out[key] = [_checked(sub, (*where, i)) for i, sub in enumerate(value)]
        elif key == "required" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise _fail(path, "'required' must be a list of property names")
        elif key == "enum" and not (isinstance(value, list) and value):
            raise _fail(path, "'enum' must be a non-empty list")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise _fail(path, "'$ref' must point into this schema ('#/$defs/...')")
    if "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


# --- grammars -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrammarSpec:
    """What a constrained request's output must match: an llguidance grammar (from the builders below)."""

    grammar: str
    kind: str  # json_object | json_schema | tool_calls


@dataclass(frozen=True)
class FunctionSpec:
    """A callable function: its name and its arguments' JSON schema (None: no arguments)."""

    name: str
    parameters: dict | None = None


def _with_options(schema: dict) -> dict:
    return {**schema, "x-guidance": _JSON_OPTIONS}


def _validated(grammar: str, kind: str) -> GrammarSpec:
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(error.strip())
    return GrammarSpec(grammar, kind)


def json_object_grammar() -> GrammarSpec:
    """Any JSON object (``response_format: {"type": "json_object"}``)."""
    return _validated(json.dumps({"grammars": [{"json_schema": _with_options({"type": "object"})}]}), "json_object")


def json_schema_grammar(schema: Any) -> GrammarSpec:
    """A JSON text valid against ``schema`` (``response_format: {"type": "json_schema", ...}``)."""
    checked = check_schema(schema)
    return _validated(json.dumps({"grammars": [{"json_schema": _with_options(checked)}]}), "json_schema")


def _literal(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text)


def _arguments_schema(parameters: dict | None) -> dict:
    """A function's arguments: a JSON object (no parameters, or ``{}``: an empty one)."""
    schema = check_schema(parameters or _NO_PARAMETERS)
    return schema if {"type", "anyOf", "$ref", "enum", "const"} & set(schema) else {**schema, "type": "object"}


def tool_call_grammar(
    functions: Sequence[FunctionSpec],
    *,
    required: bool,
    parallel: bool,
    answer: dict | None = None,
    syntax: CallSyntax = HERMES,
) -> GrammarSpec:
    """Tool calls written in ``syntax``, each naming one of ``functions`` with arguments valid against
    its schema. ``required``: the answer is calls only (one, or several with ``parallel`` when the
    syntax allows it). Else the answer is free text, or calls: after the text once it opens a call
    (a lazy trigger on the tag) for tagged syntaxes, from its start for the others (text then cannot
    start like a call); or, with an ``answer`` schema, either a JSON text valid against it or calls."""
    if not functions:
        raise GrammarError("no functions to call")
    parallel = parallel and syntax.parallel
    lines = ["%llguidance {}", *_calls_rules(syntax, parallel)]
    if required:
        lines.append("start: calls")
    elif answer is not None:
        lines.append("start: @answer | calls")
    elif syntax.tagged or not syntax.leading:  # text, then calls once the tag appears in it
        lines += [
            "start: TEXT | trigger after_opener",
            "TEXT: /(.|\\n)*/",
            f"trigger[lazy]: /(.|\\n)*{re.escape(syntax.opener.strip())}/",
        ]
    else:  # calls start the answer, or it is text that does not start like them
        first = re.escape((syntax.list_open.strip() or "{")[0])
        lines += ["start: calls | TEXT", f"TEXT: /\\s*([^{first}\\s](.|\\n)*)?/"]
    lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(functions))))
    call_id = " ID?" if syntax.call_ids else ""
    lines += [f'call_{i}: {_literal(syntax.head(f.name))} @args_{i}{call_id} "}}"' for i, f in enumerate(functions)]
    if syntax.call_ids:
        lines.append('ID: /, "id": "[A-Za-z0-9]{9}"/')
    grammars: list[dict] = [{"lark_grammar": "\n".join(lines) + "\n"}]
    grammars += [{"name": f"args_{i}", "json_schema": _with_options(_arguments_schema(f.parameters))}
                 for i, f in enumerate(functions)]  # fmt: skip
    if answer is not None and not required:
        grammars.append({"name": "answer", "json_schema": _with_options(check_schema(answer))})
    return _validated(json.dumps({"grammars": grammars}), "tool_calls")


def _calls_rules(syntax: CallSyntax, parallel: bool) -> list[str]:
    """Lark rules ``calls`` (the whole calls part) and ``after_opener`` (what follows the opening tag)."""
    opener = f"<[{syntax.opener_token}]>" if syntax.opener_token is not None else _literal(syntax.opener)
    if syntax.tagged:  # each call tagged: <tool_call>\n{...}\n</tool_call>, one after another
        head = syntax.opener[len(syntax.opener.strip()) :]  # what the trigger leaves of the tag ("\n")
        block, close = f"{opener} call {_literal(syntax.call_close)}", _literal(syntax.call_close)
        more = " block*" if parallel else ""
        return [f"calls: block{'+' if parallel else ''}", f"block: {block}",
                f"after_opener: {_literal(head)} call {close}{more}"]  # fmt: skip
    items = f"call ({_literal(syntax.separator)} call)*" if parallel else "call"
    body = " ".join(p for p in (_literal(syntax.list_open), items, _literal(syntax.list_close)) if p != '""')
    calls = f"{opener} {body}" if syntax.opener else body
    return [f"calls: {calls}", f"after_opener: {body}"]


# --- the constraint -------------------------------------------------------------------------------------


def grammar_tokenizer(tokenizer, vocab_size: int, eos_ids: set[int]) -> llguidance.LLTokenizer:
    """The vocabulary as llguidance sees it (about half a second for SmolLM2's: build once per engine)."""
    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids))
    except ValueError as exc:  # a slow (Python) tokenizer
        raise GrammarError(f"constrained decoding needs a fast tokenizer: {exc}") from exc


class GrammarConstraint:
    """One request's grammar state: which tokens may come next, advanced with each chosen token."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, spec: GrammarSpec):
        self.matcher = llguidance.LLMatcher(tokenizer, spec.grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self.vocab_size = tokenizer.vocab_size
        self.bitmask = torch.zeros((self.vocab_size + 31) // 32, dtype=torch.int32)

    def compute(self) -> bool:
        """Compute the mask of the tokens allowed next; False when none is (nothing can follow)."""
        if self.matcher.is_error():
            return False
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.bitmask.numel() * 4)
        return bool(self.bitmask.any())

    def allows(self, token: int) -> bool:
        """Whether the last computed mask allows ``token``."""
        return 0 <= token < self.vocab_size and bool(int(self.bitmask[token >> 5]) >> (token & 31) & 1)

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (one row) with every token the last computed mask forbids at -inf."""
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), bitorder="little")
        allowed = torch.zeros(logits.shape[0], dtype=torch.bool)
        n = min(logits.shape[0], self.vocab_size)
        allowed[:n] = torch.from_numpy(bits[:n].view(np.bool_))
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, token: int) -> None:
        """Record the chosen token."""
        self.matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """Whether the grammar is complete (only the end of the sequence may follow)."""
        return self.matcher.is_stopped()
