"""One distilled example: the prompt as the teacher saw it, the student's version of it, the teacher's
answer, and whether the pair is worth training on (refusals, broken JSON, duplicates and invalid
examples are dropped, each with its reason).

A prompt's *student messages* are the teacher's, optionally with the system message(s) replaced by a
short ``student_system`` (OpenAI's "shortened instruction prompt": the fine-tuned model learns the
behaviour the long prompt described) and, with ``last_turn_only``, without the turns before the last
user message (few-shot examples written as conversation turns). History is kept by default, because
in a real multi-turn conversation it is the context the answer depends on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tuneloop.data.checks import MESSAGE_KEYS, check_chat
from tuneloop.data.records import Invalid, iter_jsonl
from tuneloop.errors import TuneloopError

#: The request fields a prompt line may carry besides ``messages``; they go to the teacher as they are.
REQUEST_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
#: How many dropped examples the summary lists by line.
MAX_LISTED_DROPS = 20
_SYSTEM_ROLES = ("system", "developer")
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class PromptsFileError(TuneloopError):
    """A prompts file that cannot be used; the message names the file and line."""

    exit_code = 2


class Drop(StrEnum):
    """Why an answer did not become a training example."""

    teacher_error = "teacher_error"  # the teacher failed on it, retries included
    refusal = "refusal"  # empty answer, content_filter, or message.refusal set
    invalid_json = "invalid_json"  # the request asked for JSON and the answer is not
    duplicate = "duplicate"  # the same student prompt and answer as an earlier example
    validation = "validation"  # fails the checks of `tuneloop data validate`


@dataclass(frozen=True)
class Prompt:
    """A conversation for the teacher to answer; ``source`` names it in reports (``file:line`` or an id)."""

    source: str
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)  # tools, tool_choice, parallel_tool_calls, response_format


@dataclass(frozen=True)
class Answer:
    """The teacher's answer: ``choices[0].message`` and its ``finish_reason``."""

    message: dict[str, Any]
    finish_reason: str | None = None

    @classmethod
    def from_response(cls, response: dict[str, Any]) -> Answer:
        """From a ``chat.completion`` object (as a dict)."""
        choices = response.get("choices") or [{}]
        return cls(choices[0].get("message") or {}, choices[0].get("finish_reason"))


@dataclass(frozen=True)
class Dropped:
    """One dropped example, for the summary."""

    source: str
    reason: Drop
    detail: str


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return _CANONICAL.encode(value)


def sha256_of(value: Any) -> str:
    """The hex sha256 of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode("utf-8", "surrogatepass")).hexdigest()


def _prompt_problem(obj: Any) -> str | None:
    """Why a parsed prompt line cannot be sent to a teacher, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object with a 'messages' list, got {type(obj).__name__}"
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return "expected a non-empty 'messages' list"
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"message {i} must be an object with a 'role'"
    if "tools" in obj and not isinstance(obj["tools"], list):
        return "'tools' must be a list"
    if "response_format" in obj and not isinstance(obj["response_format"], dict):
        return "'response_format' must be an object"
    return None


def parse_prompt(obj: Any, source: str) -> Prompt:
    """A prompt line as a :class:`Prompt`; a final assistant message (an old answer) is dropped.

    Raises ``PromptsFileError`` naming ``source`` when the line cannot be sent to a teacher.
    """
    problem = _prompt_problem(obj)
    messages = list(obj["messages"]) if problem is None else []
    if messages and messages[-1]["role"] == "assistant":
        messages.pop()  # the answer the teacher's replaces
    if problem is None and not any(m["role"] == "user" for m in messages):
        problem = "the conversation has no user message to answer"
    elif problem is None and messages[-1]["role"] == "assistant":
        problem = "the conversation ends with two assistant messages"
    if problem is not None:
        raise PromptsFileError(f"{source}: {problem}")
    return Prompt(source, messages, {k: obj[k] for k in REQUEST_FIELDS if obj.get(k) is not None})


def read_prompts(path: Path) -> list[Prompt]:
    """Every prompt of a JSONL file; the first bad line stops it with a ``PromptsFileError``."""
    if not path.is_file():
        raise PromptsFileError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    prompts = []
    for number, value in iter_jsonl(path):
        if isinstance(value, Invalid):
            raise PromptsFileError(f"{path}:{number}: {value.reason}")
        prompts.append(parse_prompt(value, f"{path.name}:{number}"))
    if not prompts:
        raise PromptsFileError(f"{path}: no prompts")
    return prompts


def _training_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message in the training format: only its known keys, none of them null, ``developer`` as ``system``."""
    out = {k: v for k, v in message.items() if k in MESSAGE_KEYS and v is not None}
    if out.get("role") == "developer":
        out["role"] = "system"
    return out


def student_messages(
    messages: list[dict[str, Any]], student_system: str | None = None, last_turn_only: bool = False
) -> list[dict[str, Any]]:
    """The prompt the student is trained on (see the module docstring)."""
    kept = messages
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if last_turn_only and users:
        kept = [m for m in messages[: users[-1]] if m.get("role") in _SYSTEM_ROLES] + messages[users[-1] :]
    if student_system is not None:
        kept = [{"role": "system", "content": student_system}] + [m for m in kept if m.get("role") not in _SYSTEM_ROLES]
    return [_training_message(m) for m in kept]


def answer_message(message: dict[str, Any]) -> dict[str, Any]:
    """The teacher's answer as a training message: its text and tool calls (without stream indexes)."""
    out: dict[str, Any] = {"role": "assistant"}
    content = message.get("content")
    if isinstance(content, str) and content:
        out["content"] = content
    calls = [
        {"id": c.get("id"), "type": c.get("type", "function"),
         "function": {"name": function.get("name"), "arguments": function.get("arguments")}}
        for c in message.get("tool_calls") or [] if isinstance(c, dict)
        for function in [c.get("function") if isinstance(c.get("function"), dict) else {}]
    ]  # fmt: skip
    if calls:
        out["tool_calls"] = calls
    elif "content" not in out:
        out["content"] = ""
    return out


def drop_reason(answer: Answer, response_format: dict[str, Any] | None = None) -> tuple[Drop, str] | None:
    """Why an answer is not worth training on (a refusal, or broken JSON where JSON was asked), or None."""
    message = answer.message
    if answer.finish_reason == "content_filter":
        return Drop.refusal, "finish_reason content_filter"
    if message.get("refusal"):
        return Drop.refusal, f"refused: {' '.join(str(message['refusal']).split())[:80]}"
    content = message.get("content")
    if message.get("tool_calls"):
        return None
    if not isinstance(content, str) or not content.strip():
        return Drop.refusal, "empty answer"
    if (response_format or {}).get("type") in ("json_object", "json_schema"):
        try:
            json.loads(content)
        except ValueError as exc:
            return Drop.invalid_json, f"not valid JSON: {exc}"
    return None


def build_example(
    messages: list[dict[str, Any]], answer: Answer, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A chat-format training example: the student messages, the answer, and the tools it may call."""
    example: dict[str, Any] = {"messages": [*messages, answer_message(answer.message)]}
    for key in ("tools", "parallel_tool_calls"):
        if (value := (options or {}).get(key)) is not None:
            example[key] = value
    return example


@dataclass
class ExampleSet:
    """The examples kept so far, in order, and what was dropped and why (duplicates by content)."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Drop})
    dropped: list[Dropped] = field(default_factory=list)  # the first MAX_LISTED_DROPS
    truncated: int = 0  # kept answers that stopped at max_tokens
    _seen: set[str] = field(default_factory=set)

    def drop(self, source: str, reason: Drop, detail: str) -> None:
        self.drops[reason.value] += 1
        if len(self.dropped) < MAX_LISTED_DROPS:
            self.dropped.append(Dropped(source, reason, detail))

    def add(self, prompt: Prompt, messages: list[dict[str, Any]], answer: Answer | None, error: str = "") -> bool:
        """Judge one answer to ``prompt`` (None: the teacher failed with ``error``); keep it if it passes."""
        if answer is None:
            self.drop(prompt.source, Drop.teacher_error, error)
            return False
        if (reason := drop_reason(answer, prompt.options.get("response_format"))) is not None:
            self.drop(prompt.source, *reason)
            return False
        example = build_example(messages, answer, prompt.options)
        if problems := check_chat(example):
            self.drop(prompt.source, Drop.validation, "; ".join(f"{p.code}: {p.message}" for p in problems[:3]))
            return False
        digest = sha256_of(example)
        if digest in self._seen:
            self.drop(prompt.source, Drop.duplicate, "same student prompt and answer as an earlier example")
            return False
        self._seen.add(digest)
        self.examples.append(example)
        self.truncated += answer.finish_reason == "length"
        return True
