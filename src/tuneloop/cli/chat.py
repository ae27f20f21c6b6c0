"""``tuneloop chat``: talk to a model in the terminal."""

from __future__ import annotations

import sys
import time

import typer

from tuneloop.config import get_settings


def chat(
    model: str = typer.Argument(..., help="Model name (see `tuneloop models list`)."),
    message: str | None = typer.Option(None, "-m", "--message", help="Ask one question, print the answer, exit."),
    system: str | None = typer.Option(None, "--system", "-s", help="System prompt."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 for greedy decoding."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
) -> None:
    """Chat with a model: interactive, or one answer on stdout with -m."""
    from tuneloop.data.render import ChatRenderer
    from tuneloop.models import Catalog, load_model
    from tuneloop.serve.generate import SamplingParams, TextStream, generate_ids

    started = time.perf_counter()
    lm, tokenizer, entry = load_model(Catalog(get_settings()), model)
    print(f"Loaded {entry.name} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    renderer = ChatRenderer(tokenizer)
    stops = {t for t in (tokenizer.eos_token_id, getattr(lm.generation_config, "eos_token_id", None)) if t is not None}
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, seed=seed, stop_token_ids=stops)
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    def answer(question: str) -> str:
        history.append({"role": "user", "content": question})
        stream = TextStream(tokenizer)
        for token in generate_ids(lm, renderer.render_prompt(history), params):
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()
        sys.stdout.write("\n")
        reply = tokenizer.decode(stream.ids, skip_special_tokens=True)
        history.append({"role": "assistant", "content": reply})
        return reply

    if message is not None:
        answer(message)
        return
    print("Type a message; an empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            question = input("> ")
        except EOFError:
            break
        if not question.strip():
            break
        answer(question)
