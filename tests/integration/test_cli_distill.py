"""``tuneloop distill`` against a real server as the teacher, behind a counting proxy: a run killed midway
and run again asks the teacher exactly once per prompt; a repeated run with ``--fine-tune`` asks
nothing and creates a validated job; ``--from-stored`` turns stored completions into exactly those
examples; a broken prompts line and an unreachable teacher are one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneloop.api.process import free_port
from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess, run_cli, wait_for

N_PROMPTS = 12
KILL_AFTER = 3  # answers cached before the first run is killed
LONG_SYSTEM = "You are a careful assistant. Think about the question, then answer it in one short sentence. " * 4


class CountingProxy:
    """Forwards ``POST /v1/chat/completions`` to the teacher, counting each prompt it forwards (by its last
    user message). With ``hold_after`` set, requests beyond that many wait at the proxy, never forwarded
    unless ``release`` lets them through: the teacher is not asked for what a killed client never gets."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.forwarded: Counter[str] = Counter()
        self.hold_after: int | None = None
        self.held = 0
        self.gate = threading.Event()
        self.forward_held = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                if proxy.hold_after is not None and sum(proxy.forwarded.values()) >= proxy.hold_after:
                    proxy.held += 1
                    proxy.gate.wait()
                    if not proxy.forward_held:
                        with contextlib.suppress(OSError):  # its client was killed
                            self.send_error(503)
                        return
                status, answer = proxy.forward(self.path, body, self.headers["authorization"])
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, path: str, body: bytes, authorization: str) -> tuple[int, bytes]:
        request = json.loads(body)
        self.forwarded[request["messages"][-1]["content"]] += 1
        headers = {"content-type": "application/json", "authorization": authorization}
        upstream = urllib.request.Request(self.upstream + path.removeprefix("/v1"), body, headers)
        try:
            with urllib.request.urlopen(upstream, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("distill") / "home"
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    process = ServerProcess(home, "--no-worker").wait_ready()
    yield process
    process.stop()


@pytest.fixture
def proxy(server):
    p = CountingProxy(server.base_url)
    yield p
    p.close()


def write_prompts(path) -> list[str]:
    questions = [f"What is {i} plus {i}?" for i in range(N_PROMPTS)]
    with path.open("w") as f:
        for i, q in enumerate(questions):
            line: dict = {"messages": [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": q}]}
            if i == 1:  # an old answer, replaced by the teacher's
                line["messages"].append({"role": "assistant", "content": "an old answer"})
            if i == 2:
                line["response_format"] = {"type": "json_object"}
            f.write(json.dumps(line) + "\n")
    return questions


def distill_args(prompts, out, teacher_url: str, *extra: str) -> list[str]:
    # temperature 1: the tiny random model's greedy answer is blank lines (dropped as empty), sampled ones are words
    return ["distill", str(prompts), "-o", str(out), "--teacher-base-url", teacher_url, "--teacher-model",
            "tiny-llama", "--teacher-key-env", "TEACHER_KEY", "--max-tokens", "6", "--temperature", "1",
            "--student-system", "Answer briefly.", "--json", *extra]  # fmt: skip


def test_a_killed_run_resumes_without_asking_twice_then_fine_tunes(server, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", server.api_key)
    monkeypatch.setenv("TUNELOOP_API_KEY", server.api_key)
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    questions = write_prompts(prompts)
    cache = out / "teacher-cache.jsonl"

    proxy.hold_after = KILL_AFTER
    argv = [sys.executable, "-m", "tuneloop.cli.main", *distill_args(prompts, out, proxy.url, "--concurrency", "1")]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: proxy.held or first.poll() is not None, timeout=60, what="the 4th teacher request")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL, "the first run ended before it was killed"
    proxy.forward_held = False
    proxy.gate.set()  # the held request is answered 503 and never reaches the teacher
    assert len(cache.read_text().splitlines()) == KILL_AFTER
    with cache.open("a") as f:
        f.write('{"key": "cut short by a ki')  # what a kill in the middle of a write leaves

    proxy.hold_after = None
    second = run_cli(*distill_args(prompts, out, proxy.url, "--concurrency", "4"), timeout=120)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["inputs"], summary["cached"], summary["asked"]) == (N_PROMPTS, KILL_AFTER, N_PROMPTS - KILL_AFTER)
    assert summary["teacher_attempts"] == N_PROMPTS - KILL_AFTER and summary["retries"] == 0
    assert proxy.forwarded == Counter(questions), "the teacher was asked more than once for some prompt"
    assert summary["kept"] + summary["dropped_total"] == N_PROMPTS and summary["kept"] >= 11
    assert summary["train"] + summary["valid"] == summary["kept"] and summary["valid"] >= 1

    examples = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    assert all(e["messages"][0] == {"role": "system", "content": "Answer briefly."} for e in examples)
    assert all(e["messages"][-1]["role"] == "assistant" for e in examples)
    assert "an old answer" not in (out / "distilled.jsonl").read_text()
    json_answers = [e for e in examples if e["messages"][1]["content"] == questions[2]]
    assert all(isinstance(json.loads(e["messages"][-1]["content"]), dict) for e in json_answers)
    train = (out / "train.jsonl").read_text().splitlines()
    valid = (out / "valid.jsonl").read_text().splitlines()
    assert sorted(train + valid) == sorted((out / "distilled.jsonl").read_text().splitlines())

    # the same run again, with --fine-tune: every answer comes from the cache; the job is created and validated
    third = run_cli(*distill_args(prompts, out, proxy.url), "--fine-tune", "--model", "tiny-llama", "--epochs", "1",
                    "--suffix", "distilled", "--base-url", server.base_url, timeout=120)  # fmt: skip
    assert third.returncode == 0, third.stderr
    summary = json.loads(third.stdout)
    assert (summary["cached"], summary["asked"], summary["teacher_attempts"]) == (N_PROMPTS, 0, 0)
    assert sum(proxy.forwarded.values()) == N_PROMPTS
    job = summary["job"]
    assert job["id"].startswith("ftjob-") and job["model"] == "tiny-llama" and job["validation_file"]
    client = server.client()
    queued = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job["id"])).status != "validating_files" and j,
                      timeout=60, what="the job's validation")  # fmt: skip
    assert queued.status == "queued", queued.error
    assert queued.training_file == job["training_file"] and queued.hyperparameters.n_epochs == 1
    client.fine_tuning.jobs.cancel(job["id"])


def test_from_stored_completions_gives_exactly_those_examples(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_API_KEY", server.api_key)
    client = server.client()

    def ask(content: str, **kw):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
        return client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=5, temperature=1, **kw)

    wanted = [ask(f"stored question {i}", store=True, metadata={"task": "x", "i": str(i)}) for i in range(3)]
    ask("another task", store=True, metadata={"task": "y"})
    ask("not stored")

    out = tmp_path / "stored"
    result = run_cli("distill", "--from-stored", "--metadata", "task=x", "--base-url", server.base_url, "-o", str(out),
                     "--valid-fraction", "0", "--json", timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["source"], summary["inputs"], summary["kept"], summary["train"]) == ("stored", 3, 3, 3)
    assert summary["validation_errors"] == {"too_few_examples": 1}  # a warning here; --fine-tune would refuse
    examples = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    assert examples == [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"stored question {i}"},
                      {"role": "assistant", "content": c.choices[0].message.content}]}
        for i, c in enumerate(wanted)
    ]  # fmt: skip

    plain = run_cli("distill", "--from-stored", "--metadata", "task=x", "--base-url", server.base_url, "-o",
                    str(tmp_path / "plain"), "--student-system", "Short.", timeout=60)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "kept" in plain.stdout and "validation error: too_few_examples" in plain.stdout


def test_bad_input_and_an_unreachable_teacher_are_one_line_errors(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "user"\n')
    broken = run_cli("distill", str(prompts), "-o", str(tmp_path / "o"), "--teacher-model", "m", timeout=60)
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1, broken.stderr
    assert broken.stderr.startswith("error: ") and "prompts.jsonl:2: not valid JSON" in broken.stderr

    prompts.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-printed")
    down = run_cli("distill", str(prompts), "-o", str(tmp_path / "o"), "--teacher-model", "m", "--teacher-base-url",
                   f"http://127.0.0.1:{free_port()}/v1", "--max-retries", "1", timeout=60)  # fmt: skip
    assert down.returncode == 2 and down.stderr.count("\n") == 1, down.stderr
    assert "cannot be reached" in down.stderr and "after 2 attempts" in down.stderr
    assert "sk-never-printed" not in down.stderr + down.stdout
    assert not os.path.exists(tmp_path / "o" / "train.jsonl")
