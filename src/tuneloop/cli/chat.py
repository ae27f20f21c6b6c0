"""``tuneloop chat``: talk to a base or fine-tuned model in the terminal, locally or through a server."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import typer

from tuneloop.config import get_settings


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
    """Generate in this process with the serving engine (base, fine-tuned and checkpoint models)."""
    import queue

    from tuneloop.api.generation import eos_ids
    from tuneloop.data.render import ChatRenderer
    from tuneloop.engine.engine import Detokenizer, FinishEvent, Request
    from tuneloop.engine.model_pool import EngineOptions, ModelPool
    from tuneloop.engine.sampling import Sampler, SamplingParams
    from tuneloop.models import Catalog
    from tuneloop.store.db import make_engine
    from tuneloop.store.jobs import JobStore

    settings = get_settings()
    started = time.perf_counter()
    options = EngineOptions(max_batch=1, weights=settings.serve_weights, activations=settings.serve_activations)
    pool = ModelPool(Catalog(settings), JobStore(make_engine(settings)), options)
    resolved = pool.resolve(model)
    engine, adapter = pool.acquire(resolved)
    print(f"Loaded {model} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    renderer, eos = ChatRenderer(engine.tokenizer), eos_ids(engine)

    def reply(history: list[dict]) -> Iterator[str]:
        prompt = renderer.render_prompt(history)
        budget = min(max_tokens, pool.context_length(resolved) - len(prompt))
        params = SamplingParams(max_tokens=max(1, budget), temperature=temperature, seed=seed)
        events: queue.Queue = queue.Queue()
        engine.submit(Request(prompt, params, Sampler(params, eos), Detokenizer(engine.tokenizer, []), events.put,
                              adapter))  # fmt: skip
        while not isinstance(event := events.get(), FinishEvent):
            yield event.text

    return reply, engine.close


def _remote(base_url: str, model: str, max_tokens: int, temperature: float, seed: int | None):
    """Stream answers from a server through the OpenAI client."""
    from tuneloop.cli.client import connect

    def reply(history: list[dict]) -> Iterator[str]:
        with connect(base_url) as client:
            stream = client.chat.completions.create(
                model=model, messages=history, max_tokens=max_tokens, temperature=temperature, seed=seed, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    return reply
