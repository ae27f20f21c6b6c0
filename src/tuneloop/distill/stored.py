"""Read stored chat completions (``store: true``) back as prompts with their answers, through the
official client: ``chat.completions.list`` filtered by model and metadata, every page, and each one's
request messages from ``chat.completions.messages.list``.

The stored-completions API returns the request's messages but not its ``tools``; examples whose
answer calls tools need them declared, so ``tools`` (the same for every completion) may be given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tuneloop.distill.examples import Answer, Prompt

if TYPE_CHECKING:
    import openai

PAGE = 100  # the most the API lists per request


def stored_answers(
    client: openai.OpenAI,
    model: str | None = None,
    metadata: dict[str, str] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> Iterator[tuple[Prompt, Answer]]:
    """Each stored completion matching ``model`` and every ``metadata`` pair, oldest first."""
    query: dict[str, Any] = {"limit": PAGE, "order": "asc"}
    if model:
        query["model"] = model
    if metadata:
        query["metadata"] = metadata
    options = {"tools": tools} if tools else {}
    for completion in client.chat.completions.list(**query):  # the page iterator fetches the next pages
        messages = [
            m.model_dump(exclude_none=True) for m in client.chat.completions.messages.list(completion.id, limit=PAGE)
        ]
        choice = completion.choices[0] if completion.choices else None
        answer = Answer(choice.message.model_dump(exclude_none=True), choice.finish_reason) if choice else Answer({})
        yield Prompt(completion.id, messages, options), answer
