"""The default tool-call format, shared by training (``render.py`` writes it) and serving (parsed here).

For chat templates without tool support (SmolLM2's plain ChatML), tools are listed in the system
turn and an assistant turn writes each call as one tagged JSON object after its text::

    Let me check.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(the text and its newline only when there is text; several calls follow each other directly).
The JSON uses ``json.dumps``' separators (``", "`` and ``": "``), exactly as the serving grammar
constrains it. :class:`ToolCallParser` splits generated text back into content and calls as it
streams: a call's name as soon as it is known, then its arguments a fragment at a time.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
#: What precedes a call's arguments: ``{"name": "<name>", "arguments": `` (json.dumps' separators).
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def call_head(name: str) -> str:
    """The text of a call up to its arguments, as :func:`format_tool_call` writes it."""
    return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '


def format_tool_call(name: str | None, arguments: Any) -> str:
    """One call, tagged: ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``.

    ``arguments`` may be a JSON string (OpenAI's wire form; parsed when it is valid JSON) or a value."""
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments)
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


@dataclass
class ContentPiece:
    """Text of the answer (outside any call)."""

    text: str


@dataclass
class CallStart:
    """A call began: its position among the answer's calls and its function's name."""

    index: int
    name: str


@dataclass
class ArgumentsPiece:
    """A fragment of a call's arguments (a JSON text once all fragments are joined)."""

    index: int
    text: str


Piece = ContentPiece | CallStart | ArgumentsPiece


@dataclass
class ParsedCall:
    name: str
    arguments: str = ""
    complete: bool = False


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could still grow into one of ``markers``."""
    return max((k for m in markers for k in range(1, len(m)) if text.endswith(m[:k])), default=0)


@dataclass
class ToolCallParser:
    """Splits generated text, fed a piece at a time, into content and tool calls."""

    state: str = "text"  # text | head | args | tail
    buffer: str = ""
    calls: list[ParsedCall] = field(default_factory=list)
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False
    _started: bool = False
    _primitive: bool = False

    def feed(self, text: str) -> list[Piece]:
        """Consume generated text; return what it completes (content, call starts, argument fragments)."""
        self.buffer += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        """End of generation: text held back becomes content; a call cut short stays as it is (one cut
        before its name was complete is dropped: it has nothing to call)."""
        out: list[Piece] = []
        if self.state == "text" and self.buffer:
            out.append(ContentPiece(self.buffer))
        self.buffer = ""
        return out

    def _step(self, out: list[Piece]) -> bool:
        """Advance one state; True when it should be called again."""
        if self.state == "text":
            at = self.buffer.find(TOOL_CALL_OPEN)
            if at < 0:
                keep = _held_back(self.buffer, ("\n" + TOOL_CALL_OPEN, TOOL_CALL_OPEN))
                self._content(out, self.buffer[: len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep :]
                return False
            text = self.buffer[:at]
            self._content(out, text[:-1] if text.endswith("\n") else text)
            self.buffer, self.state = self.buffer[at + len(TOOL_CALL_OPEN) :], "head"
            return True
        if self.state == "head":
            return self._head(out)
        if self.state == "args":
            return self._arguments(out)
        at = self.buffer.find(TOOL_CALL_CLOSE)  # tail: the call's closing brace, then the tag
        if at < 0:
            return False
        self.calls[-1].complete = True
        self.buffer, self.state = self.buffer[at + len(TOOL_CALL_CLOSE) :], "text"
        return True

    def _content(self, out: list[Piece], text: str) -> None:
        if text:
            out.append(ContentPiece(text))

    def _head(self, out: list[Piece]) -> bool:
        match = _HEAD.match(self.buffer)
        if match is not None:
            self._start_call(out, json.loads(f'"{match.group(1)}"'))
            self.buffer, self.state = self.buffer[match.end() :], "args"
            self._depth, self._in_string, self._escape, self._started = 0, False, False, False
            return True
        at = self.buffer.find(TOOL_CALL_CLOSE)
        if at < 0:
            return False
        body, rest = self.buffer[:at], self.buffer[at + len(TOOL_CALL_CLOSE) :]
        try:  # another key order or spacing: read the whole call at once
            call = json.loads(body)
        except json.JSONDecodeError:
            call = None
        name = call.get("name") if isinstance(call, dict) else None
        if not isinstance(name, str):
            self._content(out, TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE)
        else:
            arguments = call.get("arguments", {})
            self._start_call(out, name)
            text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
            self.calls[-1].arguments, self.calls[-1].complete = text, True
            out.append(ArgumentsPiece(len(self.calls) - 1, text))
        self.buffer, self.state = rest, "text"
        return True

    def _start_call(self, out: list[Piece], name: str) -> None:
        self.calls.append(ParsedCall(name))
        out.append(CallStart(len(self.calls) - 1, name))

    def _arguments(self, out: list[Piece]) -> bool:
        """Scan the arguments' JSON value character by character, emitting it until it closes."""
        start, end = 0, None
        for i, c in enumerate(self.buffer):
            if not self._started:
                if c.isspace():
                    start = i + 1
                    continue
                self._started, self._primitive = True, c not in '{["'
            if self._primitive:  # a number or literal (not an object, as it should be): ends at a delimiter
                if c in ",}]" or c.isspace():
                    end = i
                    break
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
            if self._depth == 0 and not self._in_string:
                end = i + 1
                break
        text = self.buffer[start : len(self.buffer) if end is None else end]
        if text:
            self.calls[-1].arguments += text
            out.append(ArgumentsPiece(len(self.calls) - 1, text))
        if end is None:
            self.buffer = ""
            return False
        self.buffer, self.state = self.buffer[end:], "tail"
        return True


def parse_tool_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """A whole answer's content (calls removed) and its calls; the same as streaming it through a parser."""
    parser = ToolCallParser()
    pieces = parser.feed(text) + parser.finish()
    return "".join(p.text for p in pieces if isinstance(p, ContentPiece)), parser.calls
