"""``tuneloop serve`` (or ``tuneloop worker``) as a child process on a free loopback port.

Used by the quick start, the benchmarks and the integration tests: start it, wait until
``/health`` answers, talk to it with the ``openai`` client, stop it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A ``tuneloop serve`` (or ``worker``) child process with its own ``TUNELOOP_HOME``.

    It inherits this process's environment; with ``inherit_settings=False``, none of its
    ``TUNELOOP_*`` settings (only ``env`` and the home).
    """

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        command: str = "serve",
        log_path: Path | None = None,
        api_key: str | None = None,
        inherit_settings: bool = True,
    ):
        self.home = Path(home)
        self.port = free_port()
        self.api_key = api_key or (env or {}).get("TUNELOOP_API_KEY") or "tuneloop"
        inherited = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("TUNELOOP_")}
        self.env = {**inherited, "TUNELOOP_HOME": str(home), **(env or {})}
        self.log_path = log_path or self.home / f"{command}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("w")
        argv = [sys.executable, "-m", "tuneloop.cli.main", command]
        if command == "serve":
            argv += ["--port", str(self.port), *args]
        self.process = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 120) -> ServerProcess:
        """Block until ``/health`` answers; raise with the log's tail if the server exits or never answers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise TuneloopError(f"the server exited: {self.read_log()}")
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop(kill=True)
        raise TuneloopError(f"the server did not answer within {timeout:.0f} s: {self.read_log()}")

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` document."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            return json.loads(response.read())

    def client(self, api_key: str | None = None, **kwargs: Any):
        """An ``openai.OpenAI`` client for this server."""
        import openai

        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key or self.api_key, **kwargs)

    def read_log(self, chars: int = 5000) -> str:
        """The end of the server's output."""
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, kill: bool = False) -> None:
        """Terminate (or kill) the process and wait for it."""
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.closed:
            self.log.close()
