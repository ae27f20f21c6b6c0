"""``response_format: {"type": "json_object"}``: decoding constrained to one valid JSON object.

``JsonPrefix`` is a character-level pushdown automaton that accepts exactly the prefixes of JSON
texts whose top-level value is an object. At each step the constraint checks the model's most
likely tokens in order and masks out those that would break the prefix; once the object is
complete, only an end-of-sequence token remains allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

_WS = " \t\n\r"
_NUMBER_PREFIX = re.compile(r"-?(0|[1-9][0-9]*)?(\.[0-9]*)?([eE][+-]?[0-9]*)?")
_NUMBER_FULL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_HEX = set("0123456789abcdefABCDEF")


@dataclass
class JsonPrefix:
    """State of a JSON object being written, one character at a time."""

    stack: list[str] = field(default_factory=list)  # "{" or "["
    state: str = "start"  # start, value, key_or_end, key, colon, after, string, escape, unicode, number, literal, done
    is_key: bool = False
    buffer: str = ""  # the number so far, or the rest of a literal, or unicode digits read
    started: bool = False

    def copy(self) -> JsonPrefix:
        return JsonPrefix(list(self.stack), self.state, self.is_key, self.buffer, self.started)

    @property
    def complete(self) -> bool:
        return self.state == "done" or (self.state == "number" and not self.stack and self._number_done())

    def _number_done(self) -> bool:
        return bool(_NUMBER_FULL.fullmatch(self.buffer))

    def feed(self, text: str) -> bool:
        """Consume ``text``; False (state undefined) if it cannot continue a valid JSON object."""
        return all(self._char(c) for c in text)

    def _end_value(self) -> None:
        self.state = "after" if self.stack else "done"

    def _char(self, c: str) -> bool:  # noqa: C901 - one branch per automaton state
        s = self.state
        if s == "string":
            if c == '"':
                if self.is_key:
                    self.state = "colon"
                else:
                    self._end_value()
            elif c == "\\":
                self.state = "escape"
            elif ord(c) < 0x20:
                return False
            return True
        if s == "escape":
            if c == "u":
                self.state, self.buffer = "unicode", ""
                return True
            if c in '"\\/bfnrt':
                self.state = "string"
                return True
            return False
        if s == "unicode":
            if c not in _HEX:
                return False
            self.buffer += c
            if len(self.buffer) == 4:
                self.state = "string"
            return True
        if s == "number":
            if _NUMBER_PREFIX.fullmatch(self.buffer + c):
                self.buffer += c
                return True
            if not self._number_done():
                return False
            self._end_value()
            return self._char(c)
        if s == "literal":
            if not self.buffer or c != self.buffer[0]:
                return False
            self.buffer = self.buffer[1:]
            if not self.buffer:
                self._end_value()
            return True
        if c in _WS:
            return True
        if s == "done":
            return False
        if s == "start":
            if c != "{":
                return False
            self.stack.append("{")
            self.state = "key_or_end"
            return True
        if s in ("key_or_end", "key"):
            if c == '"':
                self.state, self.is_key = "string", True
                return True
            if c == "}" and s == "key_or_end":
                return self._close("{")
            return False
        if s == "colon":
            if c != ":":
                return False
            self.state = "value"
            return True
        if s == "after":
            if c == ",":
                self.state = "key" if self.stack[-1] == "{" else "value"
                return True
            return self._close("}" if c == "}" else "]" if c == "]" else "")
        if s in ("value", "value_or_end"):
            if c == "]" and s == "value_or_end":
                return self._close("[")
            return self._start_value(c)
        return False

    def _close(self, which: str) -> bool:
        opener = {"}": "{", "]": "[", "{": "{", "[": "["}.get(which)
        if not self.stack or opener != self.stack[-1]:
            return False
        self.stack.pop()
        self._end_value()
        return True

    def _start_value(self, c: str) -> bool:
        if c == '"':
            self.state, self.is_key = "string", False
        elif c == "{":
            self.stack.append("{")
            self.state = "key_or_end"
        elif c == "[":
            self.stack.append("[")
            self.state = "value_or_end"
        elif c in "-0123456789":
            self.state, self.buffer = "number", c
        elif c in "tfn":
            self.state, self.buffer = "literal", {"t": "rue", "f": "alse", "n": "ull"}[c]
        else:
            return False
        return True


class JsonConstraint:
    """Masks logits so that the generated text stays a valid JSON object, then ends."""

    def __init__(self, token_texts: list[str], eos_ids: set[int], candidates: int = 256):
        self.token_texts = token_texts
        self.eos_ids = eos_ids
        self.candidates = candidates
        self.prefix = JsonPrefix()
        self.last_was_space = False

    def _allowed(self, token: int) -> bool:
        if token in self.eos_ids:
            return self.prefix.complete
        text = self.token_texts[token]
        if not text or "\ufffd" in text or self.prefix.state in ("start", "done") and not text.lstrip():
            return False
        if self.prefix.state not in ("string", "escape", "unicode") and self._runaway_whitespace(text):
            return False
        return self.prefix.copy().feed(text)

    def _runaway_whitespace(self, text: str) -> bool:
        """Whitespace is valid JSON but lets a model stall forever: allow one blank at a time."""
        leading = len(text) - len(text.lstrip(_WS))
        return (self.last_was_space and leading > 0) or leading > 1

    def restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with every token that would break the JSON set to -inf (best candidates checked)."""
        if self.prefix.complete:
            allowed = [t for t in self.eos_ids if t < logits.shape[0]]
        else:
            order = torch.argsort(logits, descending=True)
            allowed = [int(t) for t in order[: self.candidates] if self._allowed(int(t))]
            if not allowed:  # rare: scan the whole vocabulary
                allowed = [int(t) for t in order[self.candidates :] if self._allowed(int(t))][:1]
        masked = torch.full_like(logits, float("-inf"))
        index = torch.tensor(allowed, dtype=torch.long)
        masked[index] = logits[index]
        return masked

    def advance(self, token: int) -> None:
        """Record the chosen token."""
        if token not in self.eos_ids:
            text = self.token_texts[token]
            self.prefix.feed(text)
            self.last_was_space = text[-1:] in _WS and self.prefix.state not in ("string", "escape", "unicode")
