"""Streaming readers of JSON records, shared by ``convert`` and ``split``.

JSON is parsed strictly (NaN and Infinity are rejected, as OpenAI does); a record that cannot be
read becomes an :class:`Invalid` with a short reason instead of stopping the stream, and a file
holding one JSON array is read element by element, so memory stays flat however large it is.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Invalid:
    """A record that could not be read at all (bad JSON, bad UTF-8, bad CSV)."""

    reason: str


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (resolving links; hard links too when both exist)."""
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads_strict(text: str) -> Any:
    """``json.loads`` that also rejects NaN and Infinity (not JSON, and rejected by OpenAI)."""
    return _DECODER.decode(text)


def json_error(exc: ValueError) -> str:
    """A parse error of one line as a short reason (the line number is reported separately)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    return f"not valid JSON: {exc}"


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed value or ``Invalid``) for each non-blank line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                yield number, loads_strict(raw.rstrip(b"\r\n").decode("utf-8"))
            except UnicodeDecodeError:
                yield number, Invalid("not valid UTF-8")
            except ValueError as exc:
                yield number, Invalid(json_error(exc))


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER_CHARS = frozenset("0123456789.eE+-")


class JsonArrayReader:
    """Streams the elements of a top-level JSON array, tracking the line each one starts on."""

    CHUNK = 1 << 16

    def __init__(self, f: Any):
        self.f = f
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def _fill(self) -> bool:
        """Read more text (at least doubling what is buffered); False at end of file."""
        if self.eof:
            return False
        chunk = self.f.read(max(self.CHUNK, len(self.buf) - self.pos))
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        self.eof = not chunk
        return bool(chunk)

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), consumed up to it."""
        while True:
            self._advance(_JSON_SPACE.match(self.buf, self.pos).end())
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos : self.pos + 1]

    def value(self) -> Any:
        """Decode the value at the current position; raise ValueError when it is not valid JSON."""
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except ValueError as exc:
                if self._cut_off(exc) and self._fill():
                    continue
                raise
            if (end == len(self.buf) or self.buf[end] in _NUMBER_CHARS) and self._fill():
                continue  # a number may continue in the next chunk ("12" of "12.5e3")
            self._advance(end)
            return obj

    def _cut_off(self, exc: ValueError) -> bool:
        """Whether decoding may have failed only because the buffer ends inside the value."""
        if not isinstance(exc, json.JSONDecodeError):
            return False
        return exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 8

    def _error(self, exc: ValueError) -> str:
        """Why the value at the current position is not JSON, naming the line where it breaks."""
        if not isinstance(exc, json.JSONDecodeError):
            return json_error(exc) + "; the rest was not read"
        line = self.line + self.buf.count("\n", self.pos, exc.pos)
        return f"not valid JSON: {exc.msg} (line {line}); the rest was not read"

    def elements(self) -> Iterator[tuple[int, Any]]:
        """Yield (line, element or ``Invalid``); stop at the first syntax error (it cannot resync)."""
        self.peek()
        self._advance(self.pos + 1)  # the opening '['
        if self.peek() == "]":
            return
        while True:
            line = self.line
            try:
                yield line, self.value()
            except ValueError as exc:
                yield line, Invalid(self._error(exc))
                return
            sep = self.peek()
            self._advance(self.pos + 1)
            if sep == "]":
                return
            if sep != ",":
                yield (
                    self.line,
                    Invalid("not valid JSON: expected ',' or ']' after an array element; the rest was not read"),
                )
                return
            self.peek()
