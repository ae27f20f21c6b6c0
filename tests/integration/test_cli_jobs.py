"""``tuneloop files`` and ``tuneloop jobs``: request construction against a recording stub, then the real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import typer
from typer.testing import CliRunner, Result

from tuneloop.cli import files, jobs
from tuneloop.cli.client import APIRequestError, ServerUnreachableError
from tuneloop.errors import TuneloopError

from helpers import chat_jsonl

CLI = typer.Typer()
CLI.add_typer(files.app, name="files")
CLI.add_typer(jobs.app, name="jobs")

# The real entry point's error handling, with the two apps registered (until main.py registers them itself).
MAIN_WITH_APPS = """
import sys
from tuneloop.cli import files, jobs, main
registered = {group.name for group in main.app.registered_groups}
for name, sub in (("files", files.app), ("jobs", jobs.app)):
    if name not in registered:
        main.app.add_typer(sub, name=name)
main.main()
"""


def invoke(*args: str) -> Result:
    """Run the CLI in-process (exceptions are kept in ``result.exception``)."""
    return CliRunner().invoke(CLI, list(args))


def run_tuneloop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess through ``tuneloop.cli.main.main``'s error handling."""
    return subprocess.run(
        [sys.executable, "-c", MAIN_WITH_APPS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def error_of(result: Result) -> TuneloopError:
    assert isinstance(result.exception, TuneloopError), result.output
    return result.exception


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a stub server speaking just enough of OpenAI's API -----------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Recorded], tuple[int, Any]]


class Stub:
    """Records every request and answers from a route table with canned JSON (or bytes)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.routes: dict[tuple[str, str], Answer] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                req = Recorded(self.command, url.path, parse_qs(url.query), headers, body)
                stub.requests.append(req)
                answer = stub.routes.get((self.command, url.path))
                status, payload = answer(req) if answer else (404, envelope(f"no route {self.command} {url.path}"))
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header(
                    "content-type", "application/octet-stream" if isinstance(payload, bytes) else "application/json"
                )
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def route(self, method: str, path: str, answer: Answer | Any, status: int = 200) -> None:
        self.routes[(method, "/v1" + path)] = answer if callable(answer) else (lambda _req: (status, answer))

    def only(self, method: str, path: str) -> Recorded:
        matching = [r for r in self.requests if r.method == method and r.path == "/v1" + path]
        assert len(matching) == 1, self.requests
        return matching[0]


def envelope(message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stub]:
    server = Stub()
    thread = threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("TUNELOOP_BASE_URL", server.url)
    yield server
    server.server.shutdown()
    server.server.server_close()
    thread.join()


def file_obj(file_id: str = "file-abc", filename: str = "train.jsonl", purpose: str = "fine-tune") -> dict:
    return {
        "id": file_id, "object": "file", "bytes": 1234, "created_at": 1_700_000_000, "filename": filename,
        "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None,
    }  # fmt: skip


def job_obj(job_id: str = "ftjob-abc", status: str = "queued", **fields: Any) -> dict:
    hp = {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    return {
        "id": job_id, "object": "fine_tuning.job", "created_at": 1_700_000_000, "error": None,
        "fine_tuned_model": None, "finished_at": None, "hyperparameters": hp, "model": "tiny-llama",
        "organization_id": "org-local", "result_files": [], "seed": 7, "status": status, "trained_tokens": None,
        "training_file": "file-abc", "validation_file": None, "integrations": None, "estimated_finish": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}, "metadata": None,
        "user_provided_suffix": None, "training_method": "lora",
    } | fields  # fmt: skip


def event_obj(n: int, message: str, type: str = "message", data: dict | None = None, level: str = "info") -> dict:
    return {
        "object": "fine_tuning.job.event", "id": f"ftevent-{n:04d}", "created_at": 1_700_000_000 + n,
        "level": level, "message": message, "type": type, "data": data if data is not None else {},
    }  # fmt: skip


def metrics_event(n: int, step: int, total: int, loss: float) -> dict:
    data = {"step": step, "total_steps": total, "train_loss": loss, "valid_loss": None}
    return event_obj(n, f"Step {step}/{total}: training loss={loss:.2f}", type="metrics", data=data)


def events_answer(log: list[dict]) -> Answer:
    """GET .../events over ``log`` (oldest first): newest first, honouring ``after`` and ``limit``."""

    def answer(req: Recorded) -> tuple[int, Any]:
        newest = log[::-1]
        after = req.query.get("after", [None])[0]
        if after:
            newest = newest[[e["id"] for e in newest].index(after) + 1 :]
        limit = int(req.query.get("limit", ["20"])[0])
        return 200, {"object": "list", "data": newest[:limit], "has_more": len(newest) > limit}

    return answer


# -- client, errors, options --------------------------------------------------------------------------------------


def test_no_server_is_one_line_error_with_exit_2():
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_tuneloop("files", "list", env={"TUNELOOP_BASE_URL": url})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: cannot reach the tuneloop server at {url}; start it with `tuneloop serve`"]


def test_server_error_is_one_line_with_its_message_and_exit_1(stub: Stub):
    stub.route("GET", "/fine_tuning/jobs/ftjob-nope", envelope("No fine-tuning job found with id 'ftjob-nope'."), 404)
    result = run_tuneloop("jobs", "get", "ftjob-nope")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: No fine-tuning job found with id 'ftjob-nope'. (HTTP 404)"]


def test_status_error_carries_status_code_and_param(stub: Stub):
    stub.route(
        "POST",
        "/fine_tuning/jobs",
        envelope("invalid training_file: file-x does not exist", param="training_file"),
        400,
    )  # noqa: E501
    exc = error_of(invoke("jobs", "create", "--model", "m", "--training-file", "file-x"))
    assert isinstance(exc, APIRequestError) and exc.exit_code == 1
    assert (exc.status, exc.param, exc.message) == (
        400,
        "training_file",
        "invalid training_file: file-x does not exist",
    )


def test_non_json_error_body_uses_its_first_line(stub: Stub):
    stub.route("GET", "/files", lambda _req: (400, b"plain failure\nmore detail"))
    exc = error_of(invoke("files", "list"))
    assert str(exc) == "plain failure (HTTP 400)"


def test_unreachable_in_process_is_server_unreachable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELOOP_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    exc = error_of(invoke("jobs", "list"))
    assert isinstance(exc, ServerUnreachableError) and exc.exit_code == 2


def test_api_key_from_env_or_placeholder(stub: Stub, monkeypatch: pytest.MonkeyPatch):
    stub.route("GET", "/files", {"object": "list", "data": [], "has_more": False})
    assert invoke("files", "list").exit_code == 0
    monkeypatch.setenv("TUNELOOP_API_KEY", "sekrit")
    assert invoke("files", "list").exit_code == 0
    assert [r.headers["authorization"] for r in stub.requests] == ["Bearer tuneloop", "Bearer sekrit"]


def test_base_url_option_overrides_env(stub: Stub, monkeypatch: pytest.MonkeyPatch):
    stub.route("GET", "/fine_tuning/jobs", {"object": "list", "data": [], "has_more": False})
    monkeypatch.setenv("TUNELOOP_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    result = invoke("jobs", "list", "--base-url", stub.url)
    assert result.exit_code == 0, result.output
    assert len(stub.requests) == 1


# -- files --------------------------------------------------------------------------------------------------------


def test_files_upload_sends_multipart_file_and_purpose(stub: Stub, tmp_path: Path):
    stub.route("POST", "/files", file_obj())
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": []}\n')
    result = invoke("files", "upload", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "uploaded train.jsonl as file-abc (1,234 bytes, purpose fine-tune)"
    req = stub.only("POST", "/files")
    assert req.headers["content-type"].startswith("multipart/form-data")
    assert b'name="purpose"\r\n\r\nfine-tune\r\n' in req.body
    assert b'filename="train.jsonl"' in req.body and b'{"messages": []}\n' in req.body


def test_files_upload_purpose_and_json(stub: Stub, tmp_path: Path):
    stub.route("POST", "/files", file_obj(purpose="batch"))
    path = tmp_path / "b.jsonl"
    path.write_text("{}\n")
    result = invoke("files", "upload", str(path), "--purpose", "batch", "--json")
    assert json.loads(result.stdout)["purpose"] == "batch"
    assert b'name="purpose"\r\n\r\nbatch\r\n' in stub.only("POST", "/files").body


def test_files_upload_missing_file_is_usage_error(stub: Stub, tmp_path: Path):
    result = invoke("files", "upload", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2 and stub.requests == []


def test_files_list_query_table_and_json(stub: Stub):
    page = {"object": "list", "data": [file_obj(), file_obj("file-def", "[b]valid.jsonl")], "has_more": False}
    stub.route("GET", "/files", page)
    result = invoke("files", "list", "--purpose", "fine-tune", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert "file-abc" in result.stdout and "[b]valid.jsonl" in result.stdout and "1,234" in result.stdout
    assert stub.requests[0].query == {"purpose": ["fine-tune"], "limit": ["5"]}
    as_json = json.loads(invoke("files", "list", "--json").stdout)
    assert [f["id"] for f in as_json] == ["file-abc", "file-def"]
    assert stub.requests[1].query == {}


def test_files_get_and_delete(stub: Stub):
    stub.route("GET", "/files/file-abc", file_obj())
    stub.route("DELETE", "/files/file-abc", {"id": "file-abc", "object": "file", "deleted": True})
    shown = invoke("files", "get", "file-abc")
    assert "filename:  train.jsonl" in shown.stdout and "status:    processed" in shown.stdout
    assert json.loads(invoke("files", "get", "file-abc", "--json").stdout)["bytes"] == 1234
    deleted = invoke("files", "delete", "file-abc")
    assert deleted.exit_code == 0 and deleted.stdout == "deleted file-abc\n"
    stub.only("DELETE", "/files/file-abc")


def test_files_content_to_stdout_and_to_file(stub: Stub, tmp_path: Path):
    payload = b"step,train_loss\n1,0.5\n\x00\xff"
    stub.route("GET", "/files/file-abc/content", lambda _req: (200, payload))
    result = invoke("files", "content", "file-abc")
    assert result.exit_code == 0 and result.stdout_bytes == payload
    out = tmp_path / "metrics.csv"
    result = invoke("files", "content", "file-abc", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == payload and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no partial file left


def test_files_content_error_leaves_no_file(stub: Stub, tmp_path: Path):
    stub.route("GET", "/files/file-nope/content", envelope("No file found with id 'file-nope'."), 404)
    out = tmp_path / "x.bin"
    exc = error_of(invoke("files", "content", "file-nope", "-o", str(out)))
    assert isinstance(exc, APIRequestError) and exc.status == 404
    assert list(tmp_path.iterdir()) == []
    missing = error_of(invoke("files", "content", "file-abc", "-o", str(tmp_path / "no" / "x.bin")))
    assert "does not exist" in str(missing) and len(stub.requests) == 1


# -- jobs: request construction -----------------------------------------------------------------------------------


def test_jobs_create_with_every_option(stub: Stub):
    stub.route("POST", "/fine_tuning/jobs", job_obj(status="validating_files"))
    result = invoke(
        "jobs", "create", "--model", "tiny-llama", "--training-file", "file-abc", "--validation-file", "file-def",
        "--epochs", "3", "--batch-size", "8", "--lr-multiplier", "0.5", "--suffix", "demo", "--seed", "42",
        "--method", "full", "--metadata", "team=nlp", "--metadata", "run=a=b",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "created ftjob-abc (validating_files): full fine-tuning of tiny-llama",
        "follow it with: tuneloop jobs follow ftjob-abc",
    ]
    assert stub.only("POST", "/fine_tuning/jobs").json() == {
        "model": "tiny-llama",
        "training_file": "file-abc",
        "validation_file": "file-def",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5}},
        },
        "suffix": "demo",
        "seed": 42,
        "metadata": {"team": "nlp", "run": "a=b"},
        "training_method": "full",
    }


def test_jobs_create_defaults_are_auto_and_lora(stub: Stub):
    stub.route("POST", "/fine_tuning/jobs", job_obj())
    result = invoke("jobs", "create", "--model", "m", "--training-file", "file-abc", "--json")
    assert json.loads(result.stdout)["id"] == "ftjob-abc"
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert stub.only("POST", "/fine_tuning/jobs").json() == {
        "model": "m",
        "training_file": "file-abc",
        "method": {"type": "supervised", "supervised": {"hyperparameters": auto}},
        "training_method": "lora",
    }


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--epochs", "three"], "'--epochs'"),
        (["--batch-size", "1.5"], "'--batch-size'"),
        (["--lr-multiplier", "fast"], "'--lr-multiplier'"),
        (["--metadata", "novalue"], "'--metadata'"),
        (["--method", "qlora"], "'--method'"),
        (["--seed", "-1"], "'--seed'"),
    ],
)
def test_jobs_create_bad_options_are_usage_errors(stub: Stub, args: list[str], complaint: str):
    result = invoke("jobs", "create", "--model", "m", "--training-file", "file-abc", *args)
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert stub.requests == []


def test_jobs_list_table_and_json(stub: Stub):
    done = job_obj("ftjob-def", "succeeded", fine_tuned_model="ft:tiny-llama:local:smile:abcd1234")
    stub.route("GET", "/fine_tuning/jobs", {"object": "list", "data": [done, job_obj()], "has_more": False})
    result = invoke("jobs", "list", "--limit", "7")
    assert result.exit_code == 0, result.output
    assert "ftjob-def" in result.stdout and "ftjob-abc" in result.stdout and "succeeded" in result.stdout
    assert "ft:tiny-llama:local:smile:abcd1234" in result.stdout  # printed verbatim, no :emoji: codes
    assert stub.requests[0].query == {"limit": ["7"]}
    rows = json.loads(invoke("jobs", "list", "--json").stdout)
    assert [r["id"] for r in rows] == ["ftjob-def", "ftjob-abc"] and rows[0]["training_method"] == "lora"
    assert stub.requests[1].query == {"limit": ["20"]}


def test_jobs_get_human_and_json(stub: Stub):
    error = {"code": "invalid_n_examples", "message": "Training file has 3 example(s)", "param": "training_file"}
    stub.route("GET", "/fine_tuning/jobs/ftjob-abc", job_obj(status="failed", error=error, metadata={"team": "a"}))
    out = invoke("jobs", "get", "ftjob-abc").stdout
    assert "status:           failed" in out
    assert "method:           lora" in out
    assert "hyperparameters:  epochs=3 batch_size=auto lr_multiplier=auto" in out
    assert "metadata:         team=a" in out
    assert "error:            Training file has 3 example(s) (invalid_n_examples)" in out
    assert json.loads(invoke("jobs", "get", "ftjob-abc", "--json").stdout)["error"] == error


@pytest.mark.parametrize(("action", "status"), [("cancel", "cancelled"), ("pause", "paused"), ("resume", "queued")])
def test_jobs_control_posts(stub: Stub, action: str, status: str):
    stub.route("POST", f"/fine_tuning/jobs/ftjob-abc/{action}", job_obj(status=status))
    result = invoke("jobs", action, "ftjob-abc")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ftjob-abc: {status}\n"
    assert stub.only("POST", f"/fine_tuning/jobs/ftjob-abc/{action}").body == b""


def test_jobs_control_conflict_is_error(stub: Stub):
    message = "Job ftjob-abc is already succeeded and cannot be cancelled."
    stub.route("POST", "/fine_tuning/jobs/ftjob-abc/cancel", envelope(message, code="invalid_state"), 409)
    exc = error_of(invoke("jobs", "cancel", "ftjob-abc"))
    assert isinstance(exc, APIRequestError) and (exc.status, exc.message) == (409, message)


def test_jobs_events_print_oldest_first(stub: Stub):
    log = [event_obj(1, "Created fine-tuning job"), event_obj(2, "Validating"), event_obj(3, "Oops", level="error")]
    stub.route("GET", "/fine_tuning/jobs/ftjob-abc/events", events_answer(log))
    result = invoke("jobs", "events", "ftjob-abc", "--limit", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith("  Validating") and lines[1].endswith("  Oops")
    assert stub.requests[0].query == {"limit": ["2"]}
    raw = json.loads(invoke("jobs", "events", "ftjob-abc", "--json").stdout)
    assert [e["id"] for e in raw] == ["ftevent-0003", "ftevent-0002", "ftevent-0001"]  # as the API returns


def test_jobs_checkpoints_table(stub: Stub):
    ckpt = {
        "object": "fine_tuning.job.checkpoint", "id": "ftckpt_abc", "created_at": 1_700_000_000,
        "fine_tuned_model_checkpoint": "ft:tiny-llama:local::abcd1234:ckpt-step-6", "fine_tuning_job_id": "ftjob-abc",
        "step_number": 6, "metrics": {"step": 6, "train_loss": 1.23456, "valid_loss": None},
    }  # fmt: skip
    stub.route("GET", "/fine_tuning/jobs/ftjob-abc/checkpoints", {"object": "list", "data": [ckpt], "has_more": False})
    result = invoke("jobs", "checkpoints", "ftjob-abc")
    assert result.exit_code == 0, result.output
    assert "ft:tiny-llama:local::abcd1234:ckpt-step-6" in result.stdout and "1.2346" in result.stdout
    assert json.loads(invoke("jobs", "checkpoints", "ftjob-abc", "--json").stdout)[0]["step_number"] == 6


# -- jobs follow --------------------------------------------------------------------------------------------------


class Timeline:
    """A job that moves one stage per retrieve; each stage appends its events to the job's event log."""

    def __init__(self, stub: Stub, stages: list[tuple[dict, list[dict]]]):
        self.stages, self.log, self.polls = stages, [], 0
        stub.route("GET", "/fine_tuning/jobs/ftjob-abc", self.retrieve)
        stub.route("GET", "/fine_tuning/jobs/ftjob-abc/events", events_answer(self.log))

    def retrieve(self, _req: Recorded) -> tuple[int, Any]:
        job, new_events = self.stages[min(self.polls, len(self.stages) - 1)]
        if self.polls < len(self.stages):
            self.log.extend(new_events)
        self.polls += 1
        return 200, job


def test_follow_succeeded_prints_each_message_once_and_progress(stub: Stub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jobs, "EVENTS_PAGE", 3)  # several pages per poll
    ft = "ft:tiny-llama:local::abcd1234"
    timeline = Timeline(
        stub,
        [
            (job_obj(status="validating_files"), [event_obj(1, "Created fine-tuning job: ftjob-abc")]),
            (
                job_obj(status="running"),
                [event_obj(2, "Files validated, moving job to queued state"), event_obj(3, "Fine-tuning job started")]
                + [metrics_event(3 + s, s, 10, 2.0 / s) for s in range(1, 6)]
                + [event_obj(9, "Checkpoint created at step 5", level="warn")],
            ),
            (job_obj(status="running"), []),
            (
                job_obj(status="succeeded", fine_tuned_model=ft, trained_tokens=4321),
                [metrics_event(9 + s, s, 10, 2.0 / s) for s in range(6, 11)]
                + [
                    event_obj(20, f"New fine-tuned model created: {ft}"),
                    event_obj(21, "The job has successfully completed"),
                ],  # noqa: E501
            ),
        ],
    )
    result = invoke("jobs", "follow", "ftjob-abc", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    out = result.stdout
    messages = [e["message"] for e in timeline.log if e["type"] == "message"]
    positions = [out.find(m) for m in messages]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), out
    assert all(out.count(m) == 1 for m in messages), out
    assert "Step " not in out  # metrics feed the progress bar, not the log
    assert "10/10" in out and "loss 0.2000" in out  # final progress: last step and its training loss
    assert out.rstrip().endswith(f"ftjob-abc succeeded: fine-tuned model {ft} (4,321 trained tokens)")
    event_requests = [r for r in stub.requests if r.path.endswith("/events")]
    assert all(r.query["limit"] == ["3"] for r in event_requests)
    assert any("after" in r.query for r in event_requests)
    assert timeline.polls == 4


def test_follow_failed_exits_1_with_the_job_error(stub: Stub):
    error = {"code": "invalid_n_examples", "message": "Training file has 3 example(s), but must have at least 10"}
    Timeline(
        stub,
        [
            (job_obj(status="validating_files"), [event_obj(1, "Created fine-tuning job: ftjob-abc")]),
            (job_obj(status="failed", error=error), [event_obj(2, error["message"], level="error")]),
        ],
    )
    result = invoke("jobs", "follow", "ftjob-abc", "--interval", "0.05")
    exc = error_of(result)
    assert exc.exit_code == 1
    assert str(exc) == f"ftjob-abc failed: {error['message']}"


def test_follow_cancelled_exits_1_through_main(stub: Stub):
    Timeline(stub, [(job_obj(status="cancelled"), [event_obj(1, "Fine-tuning job cancelled")])])
    result = run_tuneloop("jobs", "follow", "ftjob-abc", "--interval", "0.05")
    assert result.returncode == 1
    assert "Fine-tuning job cancelled" in result.stdout
    assert result.stderr.strip().splitlines() == ["error: ftjob-abc was cancelled"]


def test_follow_stops_when_paused(stub: Stub):
    Timeline(
        stub,
        [
            (job_obj(status="running"), [event_obj(1, "Fine-tuning job started")]),
            (job_obj(status="paused"), [event_obj(2, "Fine-tuning job paused (checkpointing)")]),
        ],
    )
    result = invoke("jobs", "follow", "ftjob-abc", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert "Fine-tuning job paused (checkpointing)" in result.stdout
    assert "ftjob-abc is paused; continue with: tuneloop jobs resume ftjob-abc" in result.stdout


def test_create_follow_follows_the_new_job(stub: Stub):
    stub.route("POST", "/fine_tuning/jobs", job_obj(status="validating_files"))
    Timeline(
        stub,
        [(job_obj(status="succeeded", fine_tuned_model="ft:x"), [event_obj(1, "The job has successfully completed")])],
    )  # noqa: E501
    result = invoke("jobs", "create", "--model", "m", "--training-file", "file-abc", "--follow", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert "created ftjob-abc" in result.stdout and "The job has successfully completed" in result.stdout
    assert "follow it with" not in result.stdout
    assert result.stdout.rstrip().endswith("ftjob-abc succeeded: fine-tuned model ft:x")


# -- against the real server (tiny model, real worker) ------------------------------------------------------------


def test_real_server_whole_loop(api_server, tmp_path: Path):
    url = ["--base-url", api_server.base_url]
    train = chat_jsonl(tmp_path / "train.jsonl", 12)
    uploaded = invoke("files", "upload", train, "--json", *url)
    assert uploaded.exit_code == 0, uploaded.output
    file_id = json.loads(uploaded.stdout)["id"]

    created = invoke(
        "jobs", "create", "--model", "tiny-llama", "--training-file", file_id, "--epochs", "1", "--batch-size", "4",
        "--suffix", "cli", "--metadata", "via=cli", "--follow", "--interval", "0.2", *url,
    )  # fmt: skip
    assert created.exit_code == 0, (created.output, api_server.read_log())
    out = created.stdout
    job_id = out.split()[1]
    assert out.index(f"Created fine-tuning job: {job_id}") < out.index("Fine-tuning job started")
    assert out.index("Fine-tuning job started") < out.index("The job has successfully completed")
    assert "3/3" in out and "loss " in out
    assert f"{job_id} succeeded: fine-tuned model ft:tiny-llama:local:cli:" in out

    job = json.loads(invoke("jobs", "get", job_id, "--json", *url).stdout)
    assert job["status"] == "succeeded" and job["metadata"] == {"via": "cli"} and job["training_method"] == "lora"
    assert job["hyperparameters"]["n_epochs"] == 1 and job["hyperparameters"]["batch_size"] == 4
    listed = invoke("jobs", "list", *url)
    assert job_id in listed.stdout and "succeeded" in listed.stdout

    events = invoke("jobs", "events", job_id, "--limit", "100", *url).stdout.splitlines()
    assert events[0].endswith(f"Created fine-tuning job: {job_id}")
    assert events[-1].endswith("The job has successfully completed")
    assert ":ckpt-step-3" in invoke("jobs", "checkpoints", job_id, *url).stdout

    results = json.loads(invoke("files", "list", "--purpose", "fine-tune-results", "--json", *url).stdout)
    assert [f["id"] for f in results] == job["result_files"]
    csv = tmp_path / "metrics.csv"
    assert invoke("files", "content", job["result_files"][0], "-o", str(csv), *url).exit_code == 0
    assert csv.read_text().startswith("step,train_loss")

    exc = error_of(invoke("jobs", "cancel", job_id, *url))
    assert isinstance(exc, APIRequestError) and exc.status == 409 and "cannot be cancelled" in exc.message
    assert invoke("files", "delete", file_id, *url).stdout == f"deleted {file_id}\n"
    gone = error_of(invoke("files", "get", file_id, *url))
    assert isinstance(gone, APIRequestError) and gone.status == 404


def test_real_server_failed_job_follow_exits_1(api_server, tmp_path: Path):
    url = ["--base-url", api_server.base_url]
    file_id = json.loads(invoke("files", "upload", chat_jsonl(tmp_path / "few.jsonl", 3), "--json", *url).stdout)["id"]
    result = run_tuneloop(
        "jobs", "create", "--model", "tiny-llama", "--training-file", file_id, "--follow", "--interval", "0.2", *url
    )
    assert result.returncode == 1, result.stderr
    assert "Training file has 3 example(s)" in result.stdout  # the error event, as it arrived
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ftjob-")
        and "failed: Training file has 3 example(s)" in lines[0]
    )


def test_real_server_rejections_are_one_line_errors(api_server, tmp_path: Path):
    url = ["--base-url", api_server.base_url]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    cases = [
        (["files", "upload", str(notes)], "error: Fine-tuning files must be .jsonl files. (HTTP 400)"),
        (["jobs", "get", "ftjob-nope"], "error: No fine-tuning job found with id 'ftjob-nope'. (HTTP 404)"),
        (["jobs", "create", "--model", "nope", "--training-file", "file-x"], "error: unknown model 'nope'"),
    ]
    for args, expected in cases:
        result = run_tuneloop(*args, *url)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_real_server_wrong_api_key(tmp_path_factory: pytest.TempPathFactory):
    from helpers import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("keyed-home"), env={"TUNELOOP_API_KEY": "right"}).wait_ready()
    try:
        url = ["--base-url", server.base_url]
        wrong = run_tuneloop("files", "list", *url, env={"TUNELOOP_API_KEY": "wrong"})
        assert wrong.returncode == 1
        assert wrong.stderr.strip().splitlines() == ["error: Incorrect API key provided. (HTTP 401)"]
        right = run_tuneloop("files", "list", "--json", *url, env={"TUNELOOP_API_KEY": "right"})
        assert right.returncode == 0 and json.loads(right.stdout) == []
    finally:
        server.stop()
