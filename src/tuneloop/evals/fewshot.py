"""Few-shot prompts: training examples as prior user/assistant turns before the evaluated question.

The shots follow the evaluated example's own system prompt (if any), so the model sees one system
prompt, then ``k`` solved examples, then the question. The training pool is shuffled once with the
seed, so every evaluated example gets the same shots (in the same order) except where a shot is
identical to the example being evaluated, which is skipped and replaced by the next one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.data.render import content_text

Message = dict[str, Any]
#: Default budget for the shots when ``k`` is not given.
DEFAULT_TOKEN_BUDGET = 1024
#: Tokens charged per message for the chat template's role markers.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """About four characters per token, the usual rule of thumb for English BPE vocabularies."""
    return math.ceil(len(text) / 4)


def split_system(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """The leading system/developer messages and the rest of a conversation."""
    i = 0
    while i < len(messages) and messages[i].get("role") in ("system", "developer"):
        i += 1
    return list(messages[:i]), list(messages[i:])


def _turns(messages: Sequence[Message]) -> list[Message]:
    return [{"role": m["role"], "content": content_text(m.get("content"))} for m in messages]


def _question_key(messages: Sequence[Message]) -> tuple:
    """What identifies an example's question: its non-system turns before the final answer."""
    _, rest = split_system(messages)
    return tuple((m.get("role"), content_text(m.get("content")).strip()) for m in rest)


@dataclass
class Shot:
    """One training example as prior turns: user/assistant messages ending with an assistant answer."""

    messages: list[Message]
    #: The question part (turns before the final answer), to recognise the evaluated example.
    key: tuple
    tokens: int


def make_shots(
    examples: Sequence[Sequence[Message]], count_tokens: Callable[[str], int] = estimate_tokens
) -> list[Shot]:
    """Shots from training conversations; those with tool turns or without a final answer are skipped."""
    shots = []
    for messages in examples:
        _, rest = split_system(messages)
        if not rest or rest[-1].get("role") != "assistant" or rest[0].get("role") != "user":
            continue
        if any(m.get("role") not in ("user", "assistant") or m.get("tool_calls") for m in rest):
            continue
        turns = _turns(rest)
        tokens = sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in turns)
        shots.append(Shot(turns, _question_key(rest[:-1]), tokens))
    return shots


class FewShotPrompter:
    """Builds few-shot prompts from a training pool.

    With ``k`` given, exactly ``k`` shots (fewer only if the pool is smaller); otherwise as many
    shots as fit in ``token_budget`` tokens, counted with ``count_tokens`` (e.g. a tokenizer's
    ``len(tokenizer.encode(text))``; default :func:`estimate_tokens`).
    """

    def __init__(
        self,
        training: Sequence[Sequence[Message]],
        k: int | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        seed: int = 0,
        count_tokens: Callable[[str], int] = estimate_tokens,
    ):
        if k is not None and k < 0:
            raise ValueError("k must be >= 0")
        self.k, self.token_budget = k, token_budget
        self.shots = make_shots(training, count_tokens)
        random.Random(seed).shuffle(self.shots)

    def select(self, prompt: Sequence[Message]) -> list[Shot]:
        """The shots for one evaluated prompt (its messages before the reference answer)."""
        key = _question_key(prompt)
        chosen: list[Shot] = []
        used = 0
        for shot in self.shots:
            if shot.key == key:
                continue  # never show the model the question it is about to be asked
            if self.k is not None:
                if len(chosen) >= self.k:
                    break
            elif used + shot.tokens > self.token_budget:
                break
            chosen.append(shot)
            used += shot.tokens
        return chosen

    def build(self, prompt: Sequence[Message]) -> tuple[list[Message], int]:
        """The few-shot prompt (system, shots, question) and the number of shots in it."""
        system, rest = split_system(prompt)
        shots = self.select(prompt)
        messages = [dict(m) for m in system]
        for shot in shots:
            messages.extend(dict(m) for m in shot.messages)
        messages.extend(dict(m) for m in rest)
        return messages, len(shots)
