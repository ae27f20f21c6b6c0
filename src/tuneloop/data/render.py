"""Render conversations into token ids and a loss mask with the model's own chat template.

This is the one rendering path shared by validation (token statistics), training (inputs and
labels) and serving (prompts), so the model is trained on exactly what it later sees.

The mask is computed by rendering prefixes: for each trained assistant message ``i`` the text of
``messages[:i]`` with the generation prompt must be a prefix of the full text, and so must the
text of ``messages[:i+1]``; the characters between the two are the assistant's turn (its content
and the end-of-turn token, so the model learns to stop). The full text is tokenized once, with
character offsets, and a token is trained when it starts inside an assistant span.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tuneloop.data.tools import (
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    CallSyntax,
    arguments_value,
    format_tool_call,
    parse_tool_calls,
)
from tuneloop.errors import TuneloopError

#: Used when a model ships without a chat template (base models): ChatML, as SmolLM2 uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Message = dict[str, Any]
#: Private-use characters marking where trained assistant content starts and ends (fast path).
_OPEN, _CLOSE = "\ue000", "\ue001"


class TemplateError(TuneloopError):
    """The chat template cannot render a conversation consistently."""


@dataclass
class Rendered:
    """A conversation as the model sees it."""

    input_ids: list[int]
    #: ``mask[i]`` is True when token ``i`` is a training target (its loss counts).
    mask: list[bool]

    @property
    def n_trained(self) -> int:
        """Number of tokens that carry loss."""
        return sum(self.mask)

    def truncated(self, max_length: int) -> Rendered:
        """Keep the first ``max_length`` tokens (long examples are truncated from the end)."""
        return Rendered(self.input_ids[:max_length], self.mask[:max_length])


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts joined together."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TemplateError(f"unsupported message content of type {type(content).__name__}")


def answer_text(message: Message) -> str:
    """An assistant message as the default format writes it: its text, then its calls (``data/tools.py``)."""
    text, calls = content_text(message.get("content")), tool_call_text(message)
    return (text + "\n" + calls if text else calls) if calls else text


def tool_call_text(message: Message) -> str:
    """An assistant message's calls in the default format (``data/tools.py``), one tagged object each."""
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        calls.append(format_tool_call(fn.get("name"), fn.get("arguments", "{}")))
    if message.get("function_call"):
        fc = message["function_call"]
        calls.append(format_tool_call(fc.get("name"), fc.get("arguments")))
    return "".join(calls)


def _native_call(call: Message, short_ids: bool) -> Message:
    """A call as templates that render tools take it: arguments as a value (OpenAI sends a JSON string)."""
    fn = call.get("function") or {}
    out = {**call, "function": {**fn, "arguments": arguments_value(fn.get("arguments", {}))}}
    if short_ids and isinstance(call.get("id"), str):
        out["id"] = _short_id(call["id"])
    return out


def _short_id(call_id: str) -> str:
    """A call id as Mistral's templates require it (9 letters or digits), the same for a call and its result."""
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _template_messages(
    messages: Sequence[Message],
    tools: list | None,
    native_tools: bool,
    wrap: Sequence[int] = (),
    short_ids: bool = False,
) -> list[Message]:
    """Messages as plain dicts the template can render: text content, tools inlined when needed.

    The content of the messages at indices ``wrap`` is enclosed in sentinel characters; with
    ``short_ids`` call ids become the 9 characters Mistral's templates require.
    """
    out: list[Message] = []
    for i, m in enumerate(messages):
        msg: Message = {"role": m["role"], "content": content_text(m.get("content"))}
        if m.get("name"):
            msg["name"] = m["name"]
        if native_tools:
            if m.get("tool_calls"):
                msg["tool_calls"] = [_native_call(c, short_ids) for c in m["tool_calls"]]
            if "tool_call_id" in m:
                msg["tool_call_id"] = _short_id(m["tool_call_id"]) if short_ids else m["tool_call_id"]
        elif "tool_calls" in m or "function_call" in m:
            msg["content"] = answer_text(m)
        if i in wrap:
            msg["content"] = _OPEN + msg["content"] + _CLOSE
        out.append(msg)
    if tools and not native_tools:
        specs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = (
            f'You may call these tools; answer a call as {TOOL_CALL_OPEN}{{"name": ..., "arguments": ...}}'
            f"{TOOL_CALL_CLOSE}.\n<tools>\n{specs}\n</tools>"
        )
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


_PROBE_ARGUMENTS = ("probe_fn", {"probe_arg": 1})
_PROBE_CALL = {"id": "abcDEF123", "type": "function", "function": {"name": "probe_fn", "arguments": '{"probe_arg": 1}'}}
_PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_fn", "description": "A probe.", "parameters": {
    "type": "object", "properties": {"probe_arg": {"type": "integer"}}}}}]  # fmt: skip
_SYNTAXES: dict[tuple, CallSyntax | None] = {}


def _native_syntax(renderer: ChatRenderer) -> CallSyntax | None:
    """:meth:`ChatRenderer.call_syntax`, once per template and vocabulary."""
    tok = renderer.tokenizer
    key = (renderer.template, type(tok).__name__, getattr(tok, "name_or_path", ""), len(tok))
    if key not in _SYNTAXES:
        _SYNTAXES[key] = renderer.call_syntax()
    return _SYNTAXES[key]


@lru_cache(maxsize=16)
def _compiled(template: str):
    """Compile a template exactly as transformers' ``apply_chat_template`` does (cached)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(template)


class ChatRenderer:
    """Renders conversations with one tokenizer's chat template (cached compiled template)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template or CHATML_TEMPLATE
        #: How answers write tool calls: the template's own way when it renders tools and writes calls
        #: in a syntax ``data/tools.py`` parses, else the default (tools listed in the system turn).
        self.syntax = HERMES
        self.native_tools = "tools" in self.template
        self._special = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._turn_end: str | None = None
        if self.native_tools:
            syntax = _native_syntax(self)
            self.native_tools, self.syntax = syntax is not None, syntax or HERMES
        self.fast = self._probe_fast_path()

    def _messages(self, messages: Sequence[Message], tools: list | None, wrap: Sequence[int] = ()) -> list[Message]:
        return _template_messages(messages, tools, self.native_tools, wrap, short_ids=self.syntax.call_ids)

    def call_syntax(self) -> CallSyntax | None:
        """Which known syntax this (tool-rendering) template writes calls in, None when none: the
        probe call rendered by the template, decoded as serving decodes generated tokens (special
        tokens dropped), must parse back to exactly that call and nothing else."""
        user: list[Message] = [{"role": "user", "content": "Which?"}]
        answer: Message = {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}
        try:
            before = self._render(self._messages(user, _PROBE_TOOLS), _PROBE_TOOLS, True)
            full = self._render(self._messages([*user, answer], _PROBE_TOOLS), _PROBE_TOOLS, False)
        except TemplateError:
            return None
        if not full.startswith(before):
            return None
        ids = self.tokenizer(full[len(before) :], add_special_tokens=False)["input_ids"]
        decoded = self.tokenizer.decode(ids, skip_special_tokens=True)
        specials = set(getattr(self.tokenizer, "all_special_tokens", ()))
        specials |= {t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.special}
        for syntax in (HERMES, LLAMA3_JSON, MISTRAL):
            if syntax.opener.strip() in specials:
                syntax = dataclasses.replace(syntax, opener_token=self.tokenizer.convert_tokens_to_ids(syntax.opener))
            content, calls = parse_tool_calls(decoded, syntax)
            if not content.strip() and [(c.name, json.loads(c.arguments)) for c in calls] == [_PROBE_ARGUMENTS]:
                return syntax
        return None

    def _probe_fast_path(self) -> bool:
        """Whether one rendering with sentinels gives the same spans as rendering every prefix.

        Holds for templates that render each message on its own (ChatML, Llama 3, ...). It is
        re-checked on the first conversation of every batch, and switched off at the first mismatch.
        """
        try:
            tail = self.text([{"role": "user", "content": "u"}, {"role": "assistant", "content": _OPEN + _CLOSE}])
            self._turn_end = tail[tail.index(_CLOSE) + 1 :].rstrip()
            probe = [
                {"role": "system", "content": " s "},
                {"role": "user", "content": " u1 "},
                {"role": "assistant", "content": " a1 "},
                {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2\n"},
            ]
            return self._fast_text_and_spans(probe, None) == self._slow_text_and_spans(probe, None)
        except (TemplateError, ValueError):
            return False

    def text(self, messages: Sequence[Message], tools: list | None = None, add_generation_prompt: bool = False) -> str:
        """The conversation rendered to text by the chat template."""
        return self._render(self._messages(messages, tools), tools, add_generation_prompt)

    def _render(self, msgs: list[Message], tools: list | None, add_generation_prompt: bool) -> str:
        try:
            return _compiled(self.template).render(
                messages=msgs,
                tools=tools if self.native_tools else None,
                add_generation_prompt=add_generation_prompt,
                **self._special,
            )
        except TemplateError:
            raise
        except Exception as exc:
            raise TemplateError(f"chat template failed to render the conversation: {exc}") from exc

    def text_and_spans(
        self, messages: Sequence[Message], tools: list | None = None
    ) -> tuple[str, list[tuple[int, int]]]:
        """Full text of a training conversation and the character spans that carry loss."""
        if self.fast and (fast := self._fast_text_and_spans(messages, tools)) is not None:
            return fast
        return self._slow_text_and_spans(messages, tools)

    def _fast_text_and_spans(
        self, messages: Sequence[Message], tools: list | None
    ) -> tuple[str, list[tuple[int, int]]] | None:
        """One rendering with trained contents between sentinels; None when it does not apply."""
        trained = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight", 1) != 0]
        if self.native_tools and any("tool_calls" in messages[i] for i in trained):
            return None
        msgs = self._messages(messages, tools, wrap=trained)
        if sum(m["content"].count(_OPEN) + m["content"].count(_CLOSE) for m in msgs) != 2 * len(trained):
            return None  # the data itself contains a sentinel character
        raw = self._render(msgs, tools, add_generation_prompt=False)
        pieces, spans, length, pos = [], [], 0, 0
        while (start := raw.find(_OPEN, pos)) >= 0:
            end = raw.find(_CLOSE, start)
            if end < 0 or not raw.startswith(self._turn_end or "", end + 1):
                return None
            pieces += [raw[pos:start], raw[start + 1 : end]]
            length += start - pos
            spans.append((length, length + end - start - 1 + len(self._turn_end or "")))
            length += end - start - 1
            pos = end + 1
        if len(spans) != len(trained):
            return None
        pieces.append(raw[pos:])
        return "".join(pieces), [s for s in spans if s[1] > s[0]]

    def _slow_text_and_spans(
        self, messages: Sequence[Message], tools: list | None
    ) -> tuple[str, list[tuple[int, int]]]:
        """Spans by rendering the prefix before and after each trained assistant message."""
        full = self.text(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant" or m.get("weight", 1) == 0:
                continue
            before = self.text(messages[:i], tools, add_generation_prompt=True) if i else ""
            upto = full if i == len(messages) - 1 else self.text(messages[: i + 1], tools)
            if not upto.startswith(before) or not full.startswith(upto):
                raise TemplateError(
                    "the chat template renders a conversation differently from its prefixes "
                    f"(at message {i + 1}); it cannot be used to compute the assistant loss mask"
                )
            end = len(upto.rstrip())  # the end-of-turn token is trained; the newline after it is not
            if end > len(before):
                spans.append((len(before), end))
        return full, spans

    def render_many(self, conversations: Sequence[tuple[Sequence[Message], list | None]]) -> list[Rendered]:
        """Render a batch of (messages, tools) conversations; tokenization is batched."""
        if self.fast and conversations:
            first = conversations[0]
            if self._fast_text_and_spans(*first) not in (None, self._slow_text_and_spans(*first)):
                self.fast = False
        texts, all_spans = [], []
        for messages, tools in conversations:
            text, spans = self.text_and_spans(messages, tools)
            texts.append(text)
            all_spans.append(spans)
        return self._tokenize_with_spans(texts, all_spans)

    def render(self, messages: Sequence[Message], tools: list | None = None) -> Rendered:
        """Render one training conversation to token ids and its loss mask."""
        return self.render_many([(messages, tools)])[0]

    def render_prompt(self, messages: Sequence[Message], tools: list | None = None) -> list[int]:
        """Token ids of a prompt for generation (the conversation plus the assistant header)."""
        text = self.text(messages, tools, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render_completion(self, pairs: Sequence[tuple[str, str]]) -> list[Rendered]:
        """Prompt/completion examples: loss on the completion and a closing end-of-sequence token."""
        eos = self.tokenizer.eos_token or ""
        texts = [p + c + eos for p, c in pairs]
        spans = [[(len(p), len(p) + len(c) + len(eos))] for p, c in pairs]
        return self._tokenize_with_spans(texts, spans)

    def _tokenize_with_spans(self, texts: list[str], all_spans: list[list[tuple[int, int]]]) -> list[Rendered]:
        if self._backend is not None:  # the Rust tokenizer directly: batched, no per-token Python
            encodings = self._backend.encode_batch(texts, add_special_tokens=False)
        else:
            enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            encodings = [_PlainEncoding(i, o) for i, o in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
        out = []
        for text, spans, encoding in zip(texts, all_spans, encodings, strict=True):
            ids = encoding.ids
            mask = _mask_from_spans(encoding, spans)
            if mask is None:  # a token straddles a span boundary: tokenize the pieces separately
                ids, mask = self._tokenize_pieces(text, spans)
            out.append(Rendered(list(ids), mask))
        return out

    def _tokenize_pieces(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        cuts = sorted({0, len(text), *[b for s in spans for b in s]})
        ids: list[int] = []
        mask: list[bool] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            piece = self.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
            inside = any(s <= a and b <= e for s, e in spans)
            ids.extend(piece)
            mask.extend([inside] * len(piece))
        return ids, mask


class _PlainEncoding:
    """The slice of ``tokenizers.Encoding`` used here, for slow (Python) tokenizers."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]]):
        self.ids, self.offsets = ids, offsets

    def char_to_token(self, char: int) -> int | None:
        return next((i for i, (s, e) in enumerate(self.offsets) if s <= char < e), None)


def _mask_from_spans(encoding, spans: list[tuple[int, int]]) -> list[bool] | None:
    """Mark the tokens covering each span; None when a token crosses a span boundary."""
    mask = [False] * len(encoding.ids)
    offsets = encoding.offsets
    for start, end in spans:
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None or offsets[first][0] != start or offsets[last][1] != end:
            return None
        mask[first : last + 1] = [True] * (last + 1 - first)
    return mask
