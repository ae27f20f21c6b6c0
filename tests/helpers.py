"""Helpers shared by tests."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real ``tuneloop`` command in a subprocess (same interpreter, same environment)."""
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


class ServerProcess:
    """The real ``tuneloop serve`` (or ``tuneloop worker``) in a subprocess on a free loopback port."""

    def __init__(self, home, *args: str, env: dict[str, str] | None = None, command: str = "serve"):
        import os
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.home = home
        self.env = {**os.environ, "TUNELOOP_HOME": str(home), "TUNELOOP_WORKER_POLL_SECONDS": "0.5", **(env or {})}
        self.log_path = home / f"{command}-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        argv = [sys.executable, "-m", "tuneloop.cli.main", command]
        if command == "serve":
            argv += ["--port", str(self.port), *args]
        self.process = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        import time
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.read_log()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(self.read_log())

    def client(self, api_key: str = "test"):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0)

    def read_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-5000:]

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


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
