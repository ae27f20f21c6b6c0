"""Tool-call formats, shared by training (``render.py`` writes them) and serving (parsed here).

For chat templates without tool support (SmolLM2's plain ChatML), tools are listed in the system
turn and an assistant turn writes each call as one tagged JSON object after its text (the default,
:data:`HERMES`, which Qwen2.5's and Hermes' own templates also use)::

    Let me check.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(the text and its newline only when there is text; several calls follow each other directly).
Templates that render tools themselves may write calls their own way; ``render.py`` recognises
two more (:data:`LLAMA3_JSON`: the answer is ``{"name": ..., "parameters": {...}}``;
:data:`MISTRAL`: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": ...}, ...]``) and falls
back to the default for any other. The JSON uses ``json.dumps``' separators (``", "`` and
``": "``), exactly as the serving grammar constrains it. :class:`ToolCallParser` splits generated
text back into content and calls as it streams: a call's name as soon as it is known, then its
arguments a fragment at a time.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import regex

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


@dataclass(frozen=True)
class CallSyntax:
    """How a chat template writes an assistant's tool calls.

    Either each call is tagged (``opener`` call ``call_close``, text allowed before: Hermes), or the
    calls form one list (``opener`` ``list_open`` call ``separator`` call ... ``list_close``) that is
    the whole answer (Llama 3.1 JSON, Mistral). An empty ``opener``, or one the tokenizer keeps as a
    special token (``opener_token``; decoded text never shows it), means the calls start the answer.
    """

    name: str
    opener: str
    call_close: str = ""
    list_open: str = ""
    separator: str = ""
    list_close: str = ""
    arguments_key: str = "arguments"
    #: Whether the template can write several calls in one answer.
    parallel: bool = True
    #: Whether a call object may carry an ``"id"`` after its arguments (Mistral's 9-character ids).
    call_ids: bool = False
    opener_token: int | None = None

    @property
    def tagged(self) -> bool:
        """Each call has its own opening and closing tag, and text may come before the calls."""
        return bool(self.call_close)

    @property
    def leading(self) -> bool:
        """The calls can only start the answer (nothing in the decoded text announces them)."""
        return not self.tagged and (not self.opener or self.opener_token is not None)

    def head(self, name: str) -> str:
        """The text of a call up to its arguments."""
        return '{"name": ' + json.dumps(name, ensure_ascii=False) + f', "{self.arguments_key}": '


HERMES = CallSyntax("hermes", opener=TOOL_CALL_OPEN + "\n", call_close="\n" + TOOL_CALL_CLOSE)
LLAMA3_JSON = CallSyntax("llama3_json", opener="", separator="; ", arguments_key="parameters", parallel=False)
MISTRAL = CallSyntax("mistral", opener="[TOOL_CALLS]", list_open=" [", separator=", ", list_close="]", call_ids=True)
SYNTAXES = (HERMES, LLAMA3_JSON, MISTRAL)


def call_head(name: str) -> str:
    """The text of a call up to its arguments, as :func:`format_tool_call` writes it."""
    return HERMES.head(name)


def format_tool_call(name: str | None, arguments: Any) -> str:
    """One call, tagged: ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``.

    ``arguments`` may be a JSON string (OpenAI's wire form; parsed when it is valid JSON) or a value."""
    body = json.dumps({"name": name, "arguments": arguments_value(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def arguments_value(arguments: Any) -> Any:
    """A call's arguments as a value: OpenAI's JSON string parsed (kept as it is when not JSON)."""
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(arguments)
    return arguments


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


def _head_pattern(key: str) -> regex.Pattern:
    """What precedes a call's arguments: ``{"name": "<name>", "<key>": `` (any spacing)."""
    return regex.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"' + key + r'"\s*:\s*')


@dataclass
class ToolCallParser:
    """Splits generated text, fed a piece at a time, into content and tool calls (in ``syntax``)."""

    syntax: CallSyntax = HERMES
    state: str = ""  # start | text | list | head | args | tail | close | between | plain
    buffer: str = ""
    calls: list[ParsedCall] = field(default_factory=list)
    _pending: str = ""  # text consumed since the calls seemed to begin, given back if they do not
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False
    _started: bool = False
    _primitive: bool = False

    def __post_init__(self) -> None:
        self.state = self.state or ("start" if self.syntax.leading else "text")
        self._head = _head_pattern(self.syntax.arguments_key)
        self._marker = self.syntax.opener.strip()

    def feed(self, text: str) -> list[Piece]:
        """Consume generated text; return what it completes (content, call starts, argument fragments)."""
        self.buffer += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        """End of generation: text held back becomes content; a call cut short stays as it is. A tagged
        call cut before its name was complete is dropped (it has nothing to call); an untagged answer
        that never got as far as a call's name was text after all."""
        out: list[Piece] = []
        if self.state in ("start", "text", "plain"):
            self._content(out, self.buffer)
        elif self.state in ("list", "head") and not self.calls and not self.syntax.tagged:
            self._content(out, self._pending + self.buffer)
        self.buffer = ""
        return out

    def _step(self, out: list[Piece]) -> bool:  # noqa: C901 - one branch per state
        """Advance one state; True when it should be called again."""
        state = self.state
        if state == "plain":
            self._content(out, self.buffer)
            self.buffer = ""
            return False
        if state == "start":  # an untagged syntax: the answer is calls when it starts like one
            if not self.buffer.strip():
                return False
            first = (self.syntax.list_open.strip() or "{")[0]
            self.state = ("list" if self.syntax.list_open else "head") if self.buffer.lstrip()[0] == first else "plain"
            return True
        if state == "text":
            return self._text(out)
        if state == "list":
            rest = self.buffer.lstrip()
            if not rest:
                return False
            if not rest.startswith(self.syntax.list_open.strip()):
                return self._not_calls(out)
            self._pending += self.buffer[: len(self.buffer) - len(rest) + 1]
            self.buffer, self.state = rest[1:], "head"
            return True
        if state == "head":
            return self._read_head(out)
        if state == "args":
            return self._arguments(out)
        if state == "tail":  # past the arguments: to the call object's closing brace (Mistral's id first)
            return self._tail()
        if state == "close":
            at = self.buffer.find(self.syntax.call_close.strip())
            if at < 0:
                return False
            self.buffer, self.state = self.buffer[at + len(self.syntax.call_close.strip()) :], "text"
            return True
        rest = self.buffer.lstrip()  # between: another call of the list, or its end
        if not rest:
            return False
        separator, close = self.syntax.separator.strip(), self.syntax.list_close.strip()
        if separator and rest.startswith(separator):
            self.buffer, self.state = rest[len(separator) :], "head"
        elif close and rest.startswith(close):
            self.buffer, self.state = rest[len(close) :], "plain"
        else:
            self.state = "plain"
        return True

    def _text(self, out: list[Piece]) -> bool:
        at = self.buffer.find(self._marker)
        if at < 0:
            keep = _held_back(self.buffer, ("\n" + self._marker, self._marker))
            self._content(out, self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return False
        text = self.buffer[:at]
        self._content(out, text[:-1] if text.endswith("\n") else text)
        self._pending = self._marker
        self.buffer = self.buffer[at + len(self._marker) :]
        self.state = "head" if self.syntax.tagged else "list"
        return True

    def _not_calls(self, out: list[Piece]) -> bool:
        """What looked like the start of calls is not: it is content."""
        self._content(out, self._pending + self.buffer)
        self._pending, self.buffer = "", ""
        self.state = "text" if self.syntax.tagged or not self.syntax.leading else "plain"
        return False

    def _content(self, out: list[Piece], text: str) -> None:
        if text:
            out.append(ContentPiece(text))

    def _read_head(self, out: list[Piece]) -> bool:
        match = self._head.match(self.buffer, partial=True)
        if match is not None and not match.partial:
            self._start_call(out, json.loads(f'"{match.group(1)}"'))
            self.buffer, self.state, self._pending = self.buffer[match.end() :], "args", ""
            self._depth, self._in_string, self._escape, self._started = 0, False, False, False
            return True
        if not self.syntax.tagged:
            return False if match is not None else self._not_calls(out)
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
        self.buffer, self.state, self._pending = rest, "text", ""
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
            if self._scan(c):
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
        self._depth, self._in_string, self._escape = 1, False, False  # inside the call object still
        return True

    def _scan(self, c: str) -> bool:
        """Track strings and nesting over one character; True when it closes the outermost value."""
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
        return self._depth == 0 and not self._in_string

    def _tail(self) -> bool:
        for i, c in enumerate(self.buffer):
            if self._scan(c):
                self.calls[-1].complete = True
                self.buffer, self.state = self.buffer[i + 1 :], "close" if self.syntax.tagged else "between"
                return True
        self.buffer = ""
        return False


def parse_tool_calls(text: str, syntax: CallSyntax = HERMES) -> tuple[str, list[ParsedCall]]:
    """A whole answer's content (calls removed) and its calls; the same as streaming it through a parser."""
    parser = ToolCallParser(syntax)
    pieces = parser.feed(text) + parser.finish()
    return "".join(p.text for p in pieces if isinstance(p, ContentPiece)), parser.calls
