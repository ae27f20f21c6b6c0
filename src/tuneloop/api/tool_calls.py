"""One chat choice's generated text as OpenAI returns it: content, or tool calls parsed out of it.

With tools on, the text goes through ``data/tools.py``'s parser (in the model's call syntax): a whole answer becomes
``message.tool_calls`` (ids ``call_…``, ``content`` null when there are only calls) and a streamed
one becomes ``delta.tool_calls`` chunks as OpenAI streams them (index, id, type, name and empty
arguments first, then argument fragments). A choice that made calls and ended by itself finishes
with ``tool_calls``.
"""

from __future__ import annotations

from tuneloop.api.protocol import (
    ChatCompletionMessage,
    Delta,
    FunctionCall,
    FunctionDelta,
    ToolCall,
    ToolCallDelta,
)
from tuneloop.data.tools import HERMES, ArgumentsPiece, CallStart, CallSyntax, ContentPiece, Piece, ToolCallParser
from tuneloop.store.ids import random_id


class ChoiceOutput:
    """The text of one choice, turned into a message or stream deltas (tool calls parsed when ``tools``)."""

    def __init__(self, tools: bool, syntax: CallSyntax = HERMES):
        self.parser = ToolCallParser(syntax) if tools else None
        self.ids: list[str] = []  # call ids, by call index
        self.content = ""  # the answer's text outside calls, so far

    def deltas(self, text: str) -> list[Delta]:
        """The stream deltas for newly generated ``text`` (none while a tag or a call's name is pending)."""
        if self.parser is None:
            self.content += text
            return [Delta(content=text)] if text else []
        return self._deltas(self.parser.feed(text))

    def finish(self) -> list[Delta]:
        """The deltas for text held back until the end."""
        return [] if self.parser is None else self._deltas(self.parser.finish())

    def _deltas(self, pieces: list[Piece]) -> list[Delta]:
        out: list[Delta] = []
        for piece in pieces:
            if isinstance(piece, ContentPiece):
                self.content += piece.text
                if out and out[-1].content is not None:
                    out[-1].content += piece.text
                else:
                    out.append(Delta(content=piece.text))
            elif isinstance(piece, CallStart):
                self.ids.append(random_id("call_"))
                call = ToolCallDelta(index=piece.index, id=self.ids[-1], type="function",
                                     function=FunctionDelta(name=piece.name, arguments=""))  # fmt: skip
                out.append(Delta(tool_calls=[call]))
            elif isinstance(piece, ArgumentsPiece):
                call = ToolCallDelta(index=piece.index, function=FunctionDelta(arguments=piece.text))
                out.append(Delta(tool_calls=[call]))
        return out

    def finish_reason(self, reason: str) -> str:
        """``tool_calls`` for a choice that made calls and stopped by itself, else the engine's reason."""
        return "tool_calls" if reason == "stop" and self.parser is not None and self.parser.calls else reason

    def message(self) -> ChatCompletionMessage:
        """The whole answer, once all its text went through :meth:`deltas` and :meth:`finish`."""
        if self.parser is None or not self.parser.calls:
            return ChatCompletionMessage(content=self.content)
        calls = [
            ToolCall(id=self.ids[i], function=FunctionCall(name=call.name, arguments=call.arguments))
            for i, call in enumerate(self.parser.calls)
        ]
        return ChatCompletionMessage(content=self.content or None, tool_calls=calls)
