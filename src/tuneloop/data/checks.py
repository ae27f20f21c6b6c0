"""Format checks for one parsed training example: OpenAI's rules and the cookbook's, with codes.

Each check function returns a list of ``Problem`` (code, message) for one example; the validator
adds line numbers. Nothing here touches a tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAT_ROLES = ("system", "user", "assistant", "tool", "function")
_PLAIN_ROLES = frozenset(("system", "user", "assistant"))
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}


@dataclass(frozen=True)
class Problem:
    """One problem in one example."""

    code: str
    message: str


def _content_problem(content: Any, where: str) -> Problem | None:
    if content is None:
        return Problem("missing_content", f"{where} has no content")
    if isinstance(content, str):
        return None if content.strip() else Problem("missing_content", f"{where} has empty content")
    if isinstance(content, list):
        if not content:
            return Problem("missing_content", f"{where} has an empty content list")
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                return Problem("missing_content", f"{where} has a non-text content part ({kind}); only text is allowed")
            if not isinstance(part.get("text"), str) or not part["text"]:
                return Problem("missing_content", f"{where} has a text part without text")
        return None
    return Problem("missing_content", f"{where} content must be a string or a list of text parts")


def _arguments_problem(args: Any, where: str) -> Problem | None:
    if not isinstance(args, str):
        return Problem("invalid_tool_call", f"{where} arguments must be a JSON string")
    try:
        json.loads(args)
    except json.JSONDecodeError:
        return Problem("invalid_tool_call", f"{where} arguments are not valid JSON")
    return None


def tool_names(tools: Any, functions: Any) -> tuple[set[str] | None, list[Problem]]:
    """Names of the functions an example declares (None when it declares none)."""
    problems: list[Problem] = []
    names: set[str] = set()
    declared = False
    if tools is not None:
        declared = True
        if not isinstance(tools, list):
            return set(), [Problem("invalid_tool_call", "tools must be a list")]
        for i, tool in enumerate(tools, 1):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
                problems.append(
                    Problem("invalid_tool_call", f"tool {i} must be {{'type': 'function', 'function': {{...}}}}")
                )
            elif not isinstance(fn.get("name"), str) or not fn["name"]:
                problems.append(Problem("invalid_tool_call", f"tool {i} has no function name"))
            else:
                names.add(fn["name"])
    if functions is not None:
        declared = True
        if not isinstance(functions, list):
            return names, problems + [Problem("invalid_tool_call", "functions must be a list")]
        for i, fn in enumerate(functions, 1):
            if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
                names.add(fn["name"])
            else:
                problems.append(Problem("invalid_tool_call", f"function {i} has no name"))
    return (names if declared else None), problems


def _tool_calls_problems(msg: dict, where: str, names: set[str] | None, call_ids: set[str]) -> list[Problem]:
    calls = msg["tool_calls"]
    if not isinstance(calls, list) or not calls:
        return [Problem("invalid_tool_call", f"{where} tool_calls must be a non-empty list")]
    problems = []
    for j, call in enumerate(calls, 1):
        at = f"{where} tool call {j}"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(fn, dict) or not isinstance(call.get("id"), str):
            problems.append(Problem("invalid_tool_call", f"{at} must have an id and a function {{name, arguments}}"))
            continue
        if call.get("type", "function") != "function":
            problems.append(Problem("invalid_tool_call", f"{at} has type {call.get('type')!r}, expected 'function'"))
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            problems.append(Problem("invalid_tool_call", f"{at} has no function name"))
        elif names is None:
            problems.append(Problem("invalid_tool_call", f"{at} calls '{name}' but the example defines no tools"))
        elif name not in names:
            problems.append(Problem("invalid_tool_call", f"{at} calls '{name}', which is not in tools"))
        if (p := _arguments_problem(fn.get("arguments"), at)) is not None:
            problems.append(p)
        call_ids.add(call["id"])
    return problems


def check_messages(messages: Any, names: set[str] | None, *, need_assistant: bool = True) -> list[Problem]:
    """Problems in a chat example's ``messages`` list."""
    if not isinstance(messages, list) or not messages:
        return [Problem("missing_messages_list", "'messages' must be a non-empty list")]
    problems: list[Problem] = []
    call_ids: set[str] = set()
    n_assistant = n_trained = 0
    for i, msg in enumerate(messages, 1):
        # fast path for the common message: {"role": system|user|assistant, "content": "non-empty text"}
        if type(msg) is dict and len(msg) == 2 and msg.get("role") in _PLAIN_ROLES:
            content = msg.get("content")
            if type(content) is str and content and not content.isspace():
                if msg["role"] == "assistant":
                    n_assistant += 1
                    n_trained += 1
                continue
        where = f"message {i}"
        if not isinstance(msg, dict):
            problems.append(Problem("data_type", f"{where} is not an object"))
            continue
        if "role" not in msg:
            problems.append(Problem("message_missing_key", f"{where} has no 'role'"))
            continue
        role = msg["role"]
        where = f"message {i} ({role})" if isinstance(role, str) else where
        if extra := sorted(set(msg) - MESSAGE_KEYS):
            problems.append(Problem("message_unrecognized_key", f"{where} has unrecognized key(s): {', '.join(extra)}"))
        if role not in CHAT_ROLES:
            problems.append(Problem("unrecognized_role", f"{where}: role must be one of {', '.join(CHAT_ROLES)}"))
            continue
        if "weight" in msg:
            w = msg["weight"]
            if role != "assistant":
                problems.append(Problem("invalid_weight", f"{where}: only assistant messages may have a weight"))
            elif isinstance(w, bool) or w not in (0, 1):
                problems.append(Problem("invalid_weight", f"{where}: weight must be 0 or 1, got {w!r}"))
        has_call = bool(msg.get("tool_calls") or msg.get("function_call"))
        if role == "assistant":
            n_assistant += 1
            n_trained += msg.get("weight", 1) != 0
            if "tool_calls" in msg:
                problems += _tool_calls_problems(msg, where, names, call_ids)
            if "function_call" in msg:
                fc = msg["function_call"]
                if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
                    problems.append(Problem("invalid_tool_call", f"{where} function_call must have a name"))
                elif (p := _arguments_problem(fc.get("arguments"), f"{where} function_call")) is not None:
                    problems.append(p)
                elif names is not None and fc["name"] not in names:
                    problems.append(Problem("invalid_tool_call", f"{where} calls '{fc['name']}', not in functions"))
        elif "tool_calls" in msg or "function_call" in msg:
            problems.append(Problem("invalid_tool_call", f"{where}: only assistant messages may call tools"))
        if role == "tool":
            if "tool_call_id" not in msg:
                problems.append(Problem("message_missing_key", f"{where} has no 'tool_call_id'"))
            elif msg["tool_call_id"] not in call_ids:
                problems.append(
                    Problem("invalid_tool_call", f"{where} answers unknown tool_call_id {msg['tool_call_id']!r}")
                )
        if role == "function" and not msg.get("name"):
            problems.append(Problem("message_missing_key", f"{where} has no 'name'"))
        content_optional = role == "assistant" and has_call and msg.get("content") in (None, "")
        if not content_optional and (p := _content_problem(msg.get("content"), where)) is not None:
            problems.append(p)
    if need_assistant and n_assistant == 0:
        problems.append(Problem("example_missing_assistant_message", "the example has no assistant message"))
    elif need_assistant and n_trained == 0:
        problems.append(Problem("no_trainable_tokens", "every assistant message has weight 0: nothing to train on"))
    return problems


def check_chat(obj: dict) -> list[Problem]:
    """Problems in a chat-format example."""
    names, problems = tool_names(obj.get("tools"), obj.get("functions"))
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        problems.append(Problem("invalid_tool_call", "parallel_tool_calls must be true or false"))
    if "messages" not in obj:
        return problems + [Problem("missing_messages_list", "the example has no 'messages' list")]
    problems += check_messages(obj["messages"], names)
    if obj.get("parallel_tool_calls") is False and isinstance(obj["messages"], list):
        problems += _parallel_problems(obj["messages"])
    return problems


def _parallel_problems(messages: list) -> list[Problem]:
    """With ``parallel_tool_calls: false`` every assistant turn makes at most one call (as OpenAI documents)."""
    problems = []
    for i, msg in enumerate(messages, 1):
        calls = msg.get("tool_calls") if isinstance(msg, dict) and msg.get("role") == "assistant" else None
        if isinstance(calls, list) and len(calls) > 1:
            text = f"message {i} (assistant) makes {len(calls)} tool calls, but parallel_tool_calls is false"
            problems.append(Problem("invalid_tool_call", text))
    return problems


def check_preference(obj: dict) -> list[Problem]:
    """Problems in a preference (DPO) example: its input, each side, and the two sides being different."""
    inp = obj.get("input")
    if not isinstance(inp, dict):
        return [Problem("missing_messages_list", "'input' must be an object with a 'messages' list")]
    names, problems = tool_names(inp.get("tools"), inp.get("functions"))
    problems += check_messages(inp.get("messages"), names, need_assistant=False)
    sides = []
    for key in ("preferred_output", "non_preferred_output"):
        out = obj.get(key)
        if key not in obj:
            problems.append(Problem("missing_preference_output", f"the example has no '{key}' (a DPO pair needs both "
                                    "'preferred_output' and 'non_preferred_output')"))  # fmt: skip
        elif not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
            problems.append(Problem("data_type", f"'{key}' must be a list holding exactly one assistant message"))
        elif out[0].get("role") != "assistant":
            problems.append(Problem("unrecognized_role", f"'{key}' must be an assistant message"))
        elif (p := _content_problem(out[0].get("content"), f"'{key}'")) is not None:
            problems.append(p)
        else:
            sides.append(out[0])
    if len(sides) == 2 and _reply_key(sides[0]) == _reply_key(sides[1]):
        problems.append(Problem("identical_preference_outputs", "'preferred_output' and 'non_preferred_output' are "
                                "the same reply: the pair teaches nothing"))  # fmt: skip
    return problems


def _reply_key(message: dict) -> str:
    """What a reply says (its text and calls), for comparing the two sides of a pair."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return json.dumps([content or "", message.get("tool_calls"), message.get("function_call")], sort_keys=True)


def check_completion(obj: dict) -> list[Problem]:
    """Problems in a prompt/completion example."""
    problems = []
    if extra := sorted(set(obj) - {"prompt", "completion"}):
        problems.append(Problem("message_unrecognized_key", f"unrecognized key(s): {', '.join(extra)}"))
    for key in ("prompt", "completion"):
        if key not in obj:
            problems.append(Problem("message_missing_key", f"the example has no '{key}'"))
        elif not isinstance(obj[key], str):
            problems.append(Problem("missing_content", f"'{key}' must be a string"))
    if isinstance(obj.get("completion"), str) and not obj["completion"]:
        problems.append(Problem("missing_content", "'completion' is empty: nothing to train on"))
    return problems


CHECKS = {"chat": check_chat, "preference": check_preference, "completion": check_completion}
