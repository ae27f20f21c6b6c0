"""Helpers shared by tests."""

from __future__ import annotations

import subprocess
import sys

from tuneloop.api import process as tuneloop_process


def run_cli(*args: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``tuneloop`` command in a subprocess (same interpreter, same environment)."""
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


class ServerProcess(tuneloop_process.ServerProcess):
    """The real ``tuneloop serve`` (or ``worker``) on a free port, polling for jobs every 0.5 s."""

    def __init__(self, home, *args: str, env: dict[str, str] | None = None, command: str = "serve"):
        env = {"TUNELOOP_WORKER_POLL_SECONDS": "0.5", **(env or {})}
        super().__init__(home, *args, env=env, command=command, api_key="test")

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        super().wait_ready(timeout)
        return self


def wait_for(predicate, timeout: float = 120, interval: float = 0.3, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; return that value."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def chat_jsonl(path, n: int, *, answer: str = "yes", system: str | None = "Answer yes or no.") -> str:
    """Write ``n`` small chat examples and return the path as a string."""
    import json

    with open(path, "w") as f:
        for i in range(n):
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": "user", "content": f"question number {i}?"}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


def greedy_runner(runner, slot: int, ids: list[int], n: int, adapter=None) -> list[int]:
    """``n`` greedy tokens from a ``ModelRunner`` slot: prefill ``ids``, then one decode step at a time."""
    token = int(runner.prefill(slot, ids, adapter).argmax())
    out = [token]
    for _ in range(n - 1):
        token = int(runner.step([slot], [[token]], [adapter])[0].argmax())
        out.append(token)
    return out


def greedy_batch(runner, prompts: list[list[int]], adapters: list, n: int) -> list[list[int]]:
    """``n`` greedy tokens for each prompt, prefilled in slots 0, 1, ... and decoded together."""
    outs = [[int(runner.prefill(slot, ids, adapter).argmax())] for slot, (ids, adapter) in
            enumerate(zip(prompts, adapters, strict=True))]  # fmt: skip
    for _ in range(n - 1):
        logits = runner.step(list(range(len(prompts))), [out[-1:] for out in outs], adapters)
        for out, row in zip(outs, logits, strict=True):
            out.append(int(row.argmax()))
    return outs
