"""``tuneloop chat``: talk to a base or fine-tuned model in the terminal, locally or through a server."""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Iterator

import typer

from tuneloop.cli.client import connect
from tuneloop.config import get_settings
from tuneloop.data.render import ChatRenderer
from tuneloop.models import Catalog


def chat(
    model: str = typer.Argument(..., help="Base model, fine-tuned model (ft:...) or checkpoint id."),
    message: str | None = typer.Option(None, "-m", "--message", help="Ask one question, print the answer, exit."),
    system: str | None = typer.Option(None, "--system", "-s", help="System prompt."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 for greedy decoding."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Talk to a running tuneloop (or any OpenAI-compatible) server instead."
    ),
) -> None:
    """Chat with a model: interactive, or one answer on stdout with -m."""
    if base_url:
        reply, close = _remote(base_url, model, max_tokens, temperature, seed), lambda: None
    else:
        reply, close = _local(model, max_tokens, temperature, seed)
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    def answer(question: str) -> None:
        history.append({"role": "user", "content": question})
        pieces = []
        for piece in reply(history):
            sys.stdout.write(piece)
            sys.stdout.flush()
            pieces.append(piece)
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(pieces)})

    try:
        if message is not None:
            answer(message)
            return
        print("Type a message; an empty line or Ctrl-D quits.", file=sys.stderr)
        while (question := _read()) is not None:
            answer(question)
    finally:
        close()


def _read() -> str | None:
    """The next message from the terminal; None on an empty line or end of input."""
    try:
        question = input("> ")
    except EOFError:
        return None
    return question if question.strip() else None


def _local(model: str, max_tokens: int, temperature: float, seed: int | None):
    """Generate in this process with the serving engine (base, fine-tuned and checkpoint models).

    A conversation longer than the model's context raises ContextLengthError (a one-line error)."""
    # imported here: the engine loads torch and the job store SQLAlchemy, which `--base-url` and `--help` skip
    from tuneloop.engine.engine import FinishEvent
    from tuneloop.engine.model_pool import EngineOptions, ModelPool
    from tuneloop.engine.sampling import SamplingParams
    from tuneloop.store.db import make_engine
    from tuneloop.store.jobs import JobStore

    settings = get_settings()
    started = time.perf_counter()
    options = EngineOptions(max_batch=1, weights=settings.serve_weights, activations=settings.serve_activations)
    pool = ModelPool(Catalog(settings), JobStore(make_engine(settings)), options)
    engine, adapter = pool.acquire(pool.resolve(model))
    print(f"Loaded {model} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    renderer = ChatRenderer(engine.tokenizer)
    params = SamplingParams(max_tokens=max(1, max_tokens), temperature=temperature, seed=seed)

    def reply(history: list[dict]) -> Iterator[str]:
        events: queue.Queue = queue.Queue()
        engine.generate(renderer.render_prompt(history), params, adapter, events.put)
        while not isinstance(event := events.get(), FinishEvent):
            yield event.text

    return reply, engine.close


def _remote(base_url: str, model: str, max_tokens: int, temperature: float, seed: int | None):
    """Stream answers from a server through the OpenAI client."""

    def reply(history: list[dict]) -> Iterator[str]:
        with connect(base_url) as client:
            stream = client.chat.completions.create(
                model=model, messages=history, max_tokens=max_tokens, temperature=temperature, seed=seed, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    return reply
