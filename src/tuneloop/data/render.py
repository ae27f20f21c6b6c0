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

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tuneloop.errors import TuneloopError

#: Used when a model ships without a chat template (base models): ChatML, as SmolLM2 uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Message = dict[str, Any]


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


def _tool_call_text(message: Message) -> str:
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        args = fn.get("arguments", "{}")
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args) if isinstance(args, str) else args
        calls.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
    if message.get("function_call"):
        fc = message["function_call"]
        calls.append(json.dumps({"name": fc.get("name"), "arguments": fc.get("arguments")}, ensure_ascii=False))
    return "".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)


def _template_messages(messages: Sequence[Message], tools: list | None, native_tools: bool) -> list[Message]:
    """Messages as plain dicts the template can render: text content, tools inlined when needed."""
    out: list[Message] = []
    for m in messages:
        msg: Message = {"role": m["role"], "content": content_text(m.get("content"))}
        if m.get("name"):
            msg["name"] = m["name"]
        if native_tools:
            for key in ("tool_calls", "tool_call_id"):
                if key in m:
                    msg[key] = m[key]
        else:
            calls = _tool_call_text(m)
            if calls:
                msg["content"] = (msg["content"] + "\n" + calls) if msg["content"] else calls
        out.append(msg)
    if tools and not native_tools:
        specs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = (
            'You may call these tools; answer a call as <tool_call>{"name": ..., "arguments": ...}'
            f"</tool_call>.\n<tools>\n{specs}\n</tools>"
        )
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


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
        self.native_tools = "tools" in self.template
        self._special = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}

    def text(self, messages: Sequence[Message], tools: list | None = None, add_generation_prompt: bool = False) -> str:
        """The conversation rendered to text by the chat template."""
        msgs = _template_messages(messages, tools, self.native_tools)
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
        full = self.text(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant" or m.get("weight", 1) == 0:
                continue
            before = self.text(messages[:i], tools, add_generation_prompt=True) if i else ""
            upto = self.text(messages[: i + 1], tools)
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
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, spans, ids, offsets in zip(texts, all_spans, enc["input_ids"], enc["offset_mapping"], strict=True):
            mask = _mask_from_offsets(offsets, spans)
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


def _mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool] | None:
    """Mark tokens inside spans; None when a token crosses a span boundary."""
    mask = [False] * len(offsets)
    j = 0
    for i, (start, end) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        if j == len(spans):
            break
        s, e = spans[j]
        if start >= s and end <= e:
            mask[i] = True
        elif start < s < end or start < e < end:
            return None
    return mask
