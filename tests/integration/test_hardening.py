"""The server under abuse: nothing runs on for a refused request, long or chunked bodies cannot stall
it, bad input is a 400 naming the parameter, damaged adapters are clear errors, crash leftovers go."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tuneloop.config import Settings
from tuneloop.fileio import write_checksums
from tuneloop.models import Catalog
from tuneloop.store.db import make_engine
from tuneloop.store.jobs import JobStore

from helpers import ServerProcess, wait_for
from tests_lora import make_adapters

LIMITS = {
    "TUNELOOP_MAX_UPLOAD_BYTES": "1000",
    "TUNELOOP_MAX_REQUEST_BYTES": str(6 * 1024**2),
    "TUNELOOP_MAX_QUEUED_REQUESTS": "4",
    "TUNELOOP_MAX_BATCH": "2",
    "TUNELOOP_API_KEY": "test",
}
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("hardening") / "home"
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    jobs = JobStore(make_engine(Settings(home=home)))
    folders = make_adapters(tiny_model_dir, home, 2)
    write_checksums(folders[0], ["adapter_model.safetensors"])  # as training writes it; folders[1] has none
    for i, folder in enumerate(folders):
        jobs.add_model(f"ft:tiny-llama:adapter-{i}", "tiny-llama", "ftjob-test", "lora", str(folder))
    blobs = home / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / ".upload.99999999.0a1b2c3d.tmp").write_bytes(b"half an upload")  # its process died
    srv = ServerProcess(home, "--no-worker", env=LIMITS).wait_ready()
    srv.folders = folders
    yield srv
    srv.stop()


def health(server) -> dict:
    return httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10).json()


def idle(server) -> bool:
    return all(e["active"] + e["waiting"] == 0 for e in health(server)["engines"].values())


def post(server, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"authorization": "Bearer test", "content-type": "application/json", **headers}
    return httpx.post(f"{server.base_url}{path}", content=content, headers=headers, timeout=60)


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_crash_leftovers_are_removed_at_start(server):
    assert not list((server.home / "blobs").glob(".upload.*"))


def test_a_refused_request_leaves_nothing_running(server):
    client = server.client()
    client.completions.create(model="tiny-llama", prompt="warm up", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:  # the first prompt fits, the second does not
        client.completions.create(model="tiny-llama", prompt=["Once upon", "word " * 2000], max_tokens=1000)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    wait_for(lambda: idle(server), 2, 0.1, what="no active sequence")
    with pytest.raises(openai.RateLimitError):  # 3 prompts x n=2 > a queue of 4: none is queued
        client.completions.create(model="tiny-llama", prompt=["a", "b", "c"], n=2, max_tokens=1000)
    assert idle(server)
    steps = health(server)["engines"]["tiny-llama"]["decode_steps"]
    time.sleep(0.5)
    assert health(server)["engines"]["tiny-llama"]["decode_steps"] == steps
    several = client.completions.create(model="tiny-llama", prompt=["a", "b"], n=2, max_tokens=3, temperature=0)
    assert [c.index for c in several.choices] == [0, 1, 2, 3] and several.choices[0].text == several.choices[1].text


def test_a_huge_message_is_refused_at_once_while_health_answers(server):
    slowest = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            health(server)
            slowest.append(time.perf_counter() - started)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        started = time.perf_counter()
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "word " * 800_000}]}  # 4 MB
        response = post(server, "/chat/completions", body)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        poller.join()
    assert response.status_code == 400 and error(response)["code"] == "context_length_exceeded"
    assert "characters" in error(response)["message"] and error(response)["param"] == "messages"
    assert elapsed < 1.0 and max(slowest) < 1.0, (elapsed, max(slowest))


def send_chunked(server, path: str, content_type: str, chunks: Iterator[bytes]) -> tuple[int, dict, int]:
    """POST a chunked body piece by piece, stopping as soon as the server answers; return the
    status, the error envelope and the body bytes sent."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (f"POST /v1{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode())
    sent = 0
    try:
        for chunk in chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            if select.select([sock], [], [], 0.05)[0]:  # the server has answered
                break
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read())
    sock.close()
    return response.status, body["error"], sent


CHUNK = 64 * 1024


def test_chunked_bodies_are_cut_off_at_the_limit(server):
    boundary = "tuneloopboundary"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip

    def upload() -> Iterator[bytes]:  # 60 MB, were it read to the end
        yield form
        for _ in range(60 * 1024**2 // CHUNK):
            yield b"x" * CHUNK

    status, err, sent = send_chunked(server, "/files", f"multipart/form-data; boundary={boundary}", upload())
    limit = 1000 + 64 * 1024  # the upload limit plus room for the form
    assert status == 413 and err["code"] == "request_too_large", err
    assert sent <= limit + 2 * CHUNK, sent
    assert not list((server.home / "blobs").glob(".upload.*")) and server.client().files.list().data == []

    def chat() -> Iterator[bytes]:  # 9 MB of JSON against a 6 MB limit
        yield b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
        for _ in range(9 * 1024**2 // CHUNK):
            yield b"w" * CHUNK

    status, err, sent = send_chunked(server, "/chat/completions", "application/json", chat())
    assert status == 413 and sent <= 6 * 1024**2 + 2 * CHUNK


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", '{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "messages[0].content"),
        ("/completions", '{"model": "tiny-llama", "prompt": "a \\udfff b"}', "prompt"),
        ("/chat/completions", '{"model": "tiny\\ud800", "messages": [{"role": "user", "content": "x"}]}', "model"),
        ("/fine_tuning/jobs", '{"model": "tiny-llama", "training_file": "file-\\ud800"}', "training_file"),
        ("/chat/completions", '{"model": "tiny-llama", "messages": [{"role": "user", "content": '
         '[{"type": "text", "text": 5}]}]}', "messages[0].content[0].text"),
        ("/chat/completions", '{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], '
         '"seed": 18446744073709551616}', "seed"),
        ("/fine_tuning/jobs", '{"model": "tiny-llama", "training_file": "file-x", '
         '"hyperparameters": {"n_epochs": 0}}', "hyperparameters.n_epochs"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_parameter(server, path, body, param):
    response = post(server, path, body.encode())
    assert response.status_code == 400, response.text
    assert error(response)["param"] == param and error(response)["type"] == "invalid_request_error"
    if param == "hyperparameters.n_epochs":
        assert "1" in error(response)["message"] and "50" in error(response)["message"], error(response)


def test_error_hygiene(server):
    malformed = post(server, "/chat/completions", b'{"model": "tiny-llama", "messages": [')
    assert malformed.status_code == 400 and error(malformed)["param"] is None
    assert "JSON body" in error(malformed)["message"]
    wrong_method = httpx.put(f"{server.base_url}/files", headers={"authorization": "Bearer test"})
    assert wrong_method.status_code == 405 and error(wrong_method)["type"] == "invalid_request_error"
    lower = httpx.get(f"{server.base_url}/models", headers={"authorization": "bearer test"})
    assert lower.status_code == 200  # the scheme's case does not matter
    assert httpx.get(f"{server.base_url}/models", headers={"authorization": "Bearer tesT"}).status_code == 401
    client = server.client()
    record = client.files.create(file=("../../etc/passwd.jsonl", b'{"a": 1}\n'), purpose="fine-tune")
    assert record.filename == "passwd.jsonl"
    content = httpx.get(f"{server.base_url}/files/{record.id}/content", headers={"authorization": "Bearer test"})
    assert "/" not in content.headers["content-disposition"].split("filename", 1)[1]


def test_a_file_in_use_by_a_job_cannot_be_deleted(server):
    client = server.client()
    lines = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "y"}]}
             for i in range(10)]  # fmt: skip
    data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    training = client.files.create(file=("train.jsonl", data), purpose="fine-tune")  # under the 1000-byte limit
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id)
    with pytest.raises(openai.ConflictError) as err:  # no worker: the job waits
        client.files.delete(training.id)
    assert err.value.code == "file_in_use" and job.id in err.value.message
    client.fine_tuning.jobs.cancel(job.id)
    assert client.files.delete(training.id).deleted


def chat_status(server, model: str) -> httpx.Response:
    return post(server, "/chat/completions", {"model": model, "messages": USER, "max_tokens": 3})


def test_damaged_adapters_are_clear_errors_and_never_cached(server):
    checked, unchecked = server.folders
    model = "ft:tiny-llama:adapter-0"
    assert chat_status(server, model).status_code == 200  # loaded and cached
    weights = checked / "adapter_model.safetensors"
    good = weights.read_bytes()
    damaged = bytearray(good)
    damaged[-64:] = b"\x7f" * 64  # overwritten tensor bytes (finite, so only the checksum tells)
    weights.write_bytes(bytes(damaged))
    response = chat_status(server, model)
    assert response.status_code == 500 and error(response)["code"] == "model_load_failed"
    message = error(response)["message"]
    assert model in message and "checksum" in message and str(server.home) not in response.text, message
    weights.write_bytes(good)  # restored: served again (the failed load was not cached)
    assert chat_status(server, model).status_code == 200

    other, other_weights = "ft:tiny-llama:adapter-1", unchecked / "adapter_model.safetensors"
    good = other_weights.read_bytes()
    for damage, expected in (
        (good[:-100], "unreadable"),  # truncated
        (good[:-64] + b"\xff" * 64, "not finite"),  # NaNs: no checksum to tell, the values do
    ):
        other_weights.write_bytes(damage)
        response = chat_status(server, other)
        assert response.status_code == 500 and expected in error(response)["message"], error(response)
        assert str(server.home) not in response.text
    other_weights.write_bytes(good)
    config = unchecked / "adapter_config.json"
    config_text = config.read_text()
    config.write_text("{not json")
    response = chat_status(server, other)
    assert response.status_code == 500 and "adapter_config.json" in error(response)["message"]
    config.write_text(config_text)
    assert chat_status(server, other).status_code == 200
    moved = unchecked.with_name("moved-away")
    unchecked.rename(moved)  # the folder is missing
    response = chat_status(server, other)
    assert response.status_code == 500 and error(response)["code"] == "model_load_failed"
    assert "missing" in error(response)["message"] and str(server.home) not in response.text
    moved.rename(unchecked)
    assert chat_status(server, other).status_code == 200
