"""What a training file says about the prompts a fine-tuned model expects."""

from __future__ import annotations

from pathlib import Path

from tuneloop.data.examples import DataError, load_examples


def constant_system_prompt(path: Path) -> str | None:
    """The system message every example of a training file starts with, when it is one and the same text in
    all of them (chat or preference format); None when any example lacks it or differs, or the file does not load."""
    try:
        _, examples = load_examples(path)
    except DataError:
        return None
    prompts = set()
    for example in examples:
        first = (getattr(example, "messages", None) or [None])[0]  # prompt/completion examples have none
        if not (isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str)):
            return None
        prompts.add(first["content"])
    return prompts.pop() if len(prompts) == 1 else None
