"""Reading training files: JSONL lines → typed examples of one detected format → rendered tokens.

The validator (``tuneloop.data.validate``) reports every problem in a file; this module is the
fast path for a file already known to be valid (the trainer, the evaluator) and raises
``DataError`` naming the first bad line otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneloop.data.render import ChatRenderer, Rendered, content_text
from tuneloop.errors import TuneloopError

Format = Literal["chat", "preference", "completion"]


class DataError(TuneloopError):
    """A training file that cannot be used; the message names the line."""


@dataclass
class ChatExample:
    """One conversation: ``messages`` (OpenAI chat format) and optional ``tools``."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    line: int = 0


@dataclass
class PreferenceExample:
    """A DPO pair: the conversation so far and a preferred / non-preferred assistant reply."""

    messages: list[dict[str, Any]]
    preferred: dict[str, Any]
    non_preferred: dict[str, Any]
    tools: list[dict[str, Any]] | None = None
    line: int = 0


@dataclass
class CompletionExample:
    """A legacy prompt/completion pair."""

    prompt: str
    completion: str
    line: int = 0


Example = ChatExample | PreferenceExample | CompletionExample


def detect_format(obj: Any) -> Format | None:
    """The format one parsed line belongs to, or None when it matches none."""
    if not isinstance(obj, dict):
        return None
    if "input" in obj or "preferred_output" in obj or "non_preferred_output" in obj:
        return "preference"
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "completion"
    return None


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) for each non-blank line, streaming."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                yield number, raw


def _functions_as_tools(obj: dict) -> list | None:
    tools = obj.get("tools")
    if tools is None and obj.get("functions"):
        tools = [{"type": "function", "function": fn} for fn in obj["functions"]]
    return tools


def parse_example(obj: dict, fmt: Format, line: int) -> Example:
    """Build a typed example from one parsed line of a known format (no validation)."""
    if fmt == "chat":
        return ChatExample(obj["messages"], _functions_as_tools(obj), line)
    if fmt == "preference":
        inp = obj["input"]
        return PreferenceExample(
            inp["messages"], obj["preferred_output"][0], obj["non_preferred_output"][0], _functions_as_tools(inp), line
        )
    return CompletionExample(obj["prompt"], obj["completion"], line)


def load_examples(path: Path) -> tuple[Format, list[Example]]:
    """Load every example of a valid training file; raise DataError naming the first bad line."""
    fmt: Format | None = None
    examples: list[Example] = []
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    for line, raw in iter_lines(path):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:{line}: not valid JSON ({exc})") from exc
        line_fmt = detect_format(obj)
        if line_fmt is None:
            raise DataError(f"{path}:{line}: not a chat, preference or prompt/completion example")
        if fmt is not None and line_fmt != fmt:
            raise DataError(f"{path}:{line}: {line_fmt} example in a {fmt} file (formats cannot be mixed)")
        fmt = line_fmt
        try:
            examples.append(parse_example(obj, line_fmt, line))
        except (KeyError, IndexError, TypeError) as exc:
            raise DataError(f"{path}:{line}: malformed {line_fmt} example ({exc!r})") from exc
    if fmt is None:
        raise DataError(f"{path}: no examples")
    return fmt, examples


def final_answer(example: Example) -> str | None:
    """The answer an example ends with (its last assistant message's text, or the completion);
    None when it ends with tool calls or is a preference pair."""
    if isinstance(example, CompletionExample):
        return example.completion
    if isinstance(example, ChatExample):
        last = next((m for m in reversed(example.messages) if m.get("role") == "assistant"), None)
        if last is not None and not last.get("tool_calls"):
            return content_text(last.get("content"))
    return None


def render_examples(
    renderer: ChatRenderer, examples: Sequence[Example], max_length: int | None = None, batch: int = 512
) -> list[Rendered]:
    """Token ids and loss masks for chat or completion examples, truncated to ``max_length``."""
    out: list[Rendered] = []
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        if all(isinstance(e, ChatExample) for e in chunk):
            out.extend(renderer.render_many([(e.messages, e.tools) for e in chunk]))
        elif all(isinstance(e, CompletionExample) for e in chunk):
            out.extend(renderer.render_completion([(e.prompt, e.completion) for e in chunk]))
        else:
            raise DataError("only chat and prompt/completion examples can be rendered for supervised training")
    if max_length is not None:
        out = [r.truncated(max_length) for r in out]
    return out


def preference_conversations(example: PreferenceExample) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The two conversations of a pair: the input then the preferred (or non-preferred) reply, the only trained
    turn (earlier assistant turns of the input are context)."""
    context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in example.messages]
    reply = lambda m: {k: v for k, v in m.items() if k != "weight"}  # noqa: E731
    return context + [reply(example.preferred)], context + [reply(example.non_preferred)]


def render_preferences(
    renderer: ChatRenderer, examples: Sequence[PreferenceExample], max_length: int | None = None, batch: int = 512
) -> list[tuple[Rendered, Rendered]]:
    """(preferred, non-preferred) token ids and loss masks of each pair, truncated to ``max_length``."""
    conversations: list[tuple[list[dict[str, Any]], list | None]] = []
    for e in examples:
        if not isinstance(e, PreferenceExample):
            raise DataError(f"line {e.line}: a DPO run needs preference examples, not {type(e).__name__}")
        chosen, rejected = preference_conversations(e)
        conversations += [(chosen, e.tools), (rejected, e.tools)]
    out: list[Rendered] = []
    for start in range(0, len(conversations), batch):
        out.extend(renderer.render_many(conversations[start : start + batch]))
    if max_length is not None:
        out = [r.truncated(max_length) for r in out]
    return list(zip(out[0::2], out[1::2], strict=True))
