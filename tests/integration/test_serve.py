"""Serving over HTTP with the official client: batching, adapters, streaming, sampling options, errors."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tuneloop.config import Settings
from tuneloop.engine import native
from tuneloop.models import Catalog
from tuneloop.store.db import make_engine
from tuneloop.store.jobs import JobStore

from helpers import ServerProcess, wait_for
from tests_lora import make_adapters

ADAPTERS = [f"ft:tiny-llama:local:a{i}:test000{i}" for i in range(3)]
USER = [{"role": "user", "content": "Tell me something."}]


def _home(tmp_path_factory, tiny_model_dir, name: str):
    home = tmp_path_factory.mktemp(name)
    settings = Settings(home=home)
    Catalog(settings).add("tiny-llama", tiny_model_dir)
    jobs = JobStore(make_engine(settings))
    for model_id, folder in zip(ADAPTERS, make_adapters(tiny_model_dir, home, 3), strict=True):
        jobs.add_model(model_id, "tiny-llama", "ftjob-test", "lora", str(folder))
    return home


@pytest.fixture(scope="module", params=["auto", "int8"])
def server(request, tmp_path_factory, tiny_model_dir):
    """The server on float32 weights (the tiny model has no GGUF: "auto" keeps float32) and on int8 codes."""
    home = _home(tmp_path_factory, tiny_model_dir, "serve-home")
    srv = ServerProcess(home, "--no-worker", env={"TUNELOOP_SERVE_WEIGHTS": request.param}).wait_ready()
    yield srv
    srv.stop()


def test_weights_mode_decides_which_layers_are_quantized(server):
    client = server.client()
    ask(client, "tiny-llama", "hello")  # loads the engine
    quantized = engine_stats(server)["quantized_layers"]
    int8 = server.env["TUNELOOP_SERVE_WEIGHTS"] == "int8" and native.available()  # else float32 throughout
    assert quantized == (2 * 7 + 1 if int8 else 0)  # every projection of both layers, and the head
    stats = engine_stats(server)  # how many threads decode: all of them, or one while the cores are shared
    assert 1 <= stats["threads"] <= stats["max_threads"]
    assert stats["shared_cpu_drops"] == stats["shared_cpu_steps"] == 0  # tests pin the thread count


def engine_stats(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health") as r:
        return json.loads(r.read())["engines"].get("tiny-llama", {})


def ask(client, model: str, content: str, max_tokens: int = 12, **kw) -> str:
    messages = [{"role": "user", "content": content}]
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens, **kw)
    return r.choices[0].message.content


def test_streaming_equals_non_streaming(server):
    client = server.client()
    for model in ("tiny-llama", ADAPTERS[0]):
        whole = client.chat.completions.create(model=model, messages=USER, temperature=0, max_tokens=16)
        chunks = list(
            client.chat.completions.create(
                model=model, messages=USER, temperature=0, max_tokens=16, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_concurrent_requests_across_adapters_match_sequential(server):
    client = server.client()
    jobs = [(model, f"request {i}: say something") for i, model in enumerate((ADAPTERS * 3)[:8])]
    before = engine_stats(server).get("decode_steps", 0)
    sequential = [ask(client, m, c) for m, c in jobs]
    sequential_steps = engine_stats(server)["decode_steps"] - before
    before = engine_stats(server)["decode_steps"]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda job: ask(client, *job), jobs))
    concurrent_steps = engine_stats(server)["decode_steps"] - before
    assert concurrent == sequential
    assert concurrent_steps < sequential_steps  # requests really shared decode steps


def test_adapters_differ_from_base_and_each_other(server):
    client = server.client()
    outputs = {m: ask(client, m, "hello there") for m in ["tiny-llama", *ADAPTERS]}
    assert len(set(outputs.values())) == 4


def test_models_list_shows_adapters_with_parent(server):
    models = {m.id: m for m in server.client().models.list()}
    assert all(models[a].parent == "tiny-llama" for a in ADAPTERS)


def test_n_seed_and_sampling(server):
    client = server.client()
    kw = {"model": "tiny-llama", "messages": USER, "max_tokens": 10, "temperature": 1.0}
    a = client.chat.completions.create(n=3, seed=7, **kw)
    b = client.chat.completions.create(n=3, seed=7, **kw)
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1


def test_stop_sequence(server):
    client = server.client()
    full = ask(client, ADAPTERS[0], "count", max_tokens=24)
    stop = next(full[k : k + 3] for k in range(2, len(full) - 3) if full[k : k + 3] not in full[: k + 2])
    cut = client.chat.completions.create(
        model=ADAPTERS[0], messages=[{"role": "user", "content": "count"}], temperature=0, max_tokens=24, stop=[stop]
    )
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(server):
    r = server.client().chat.completions.create(
        model="tiny-llama", messages=USER, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the top token
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_json_object_mode(server):
    for seed in range(3):
        r = server.client().chat.completions.create(
            model=ADAPTERS[seed], messages=USER, max_tokens=30, temperature=0.7, seed=seed,
            response_format={"type": "json_object"},
        )  # fmt: skip
        text = r.choices[0].message.content
        assert text.startswith("{") and "\n" not in text  # json.dumps' layout: no whitespace outside strings
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)


def test_completions_endpoint(server):
    client = server.client()
    r = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    again = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert again.choices[0].text == r.choices[0].text


def test_client_disconnect_stops_generation(server):
    client = server.client()
    stream = client.chat.completions.create(
        model="tiny-llama", messages=USER, max_tokens=1000, temperature=0, stream=True
    )
    next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)  # generating now
    stats = engine_stats(server)
    assert stats["active"] + stats["waiting"] == 1
    stream.close()
    wait_for(lambda: engine_stats(server)["active"] == 0, 10, what="the abandoned request to stop")
    steps = engine_stats(server)["decode_steps"]
    time.sleep(1)
    assert engine_stats(server)["decode_steps"] == steps  # no compute spent on it any more


def test_error_cases(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, "no-such-model", "hi")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "tiny-llama", "word " * 1100)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=[])
    with pytest.raises(openai.BadRequestError) as err:  # the legacy form of tools
        client.chat.completions.create(model="tiny-llama", messages=USER, functions=[{"name": "f"}])
    assert "functions" in err.value.message and err.value.param == "functions"


def test_queue_full_is_429(tmp_path_factory, tiny_model_dir):
    home = _home(tmp_path_factory, tiny_model_dir, "busy-home")
    env = {"TUNELOOP_MAX_BATCH": "1", "TUNELOOP_MAX_QUEUED_REQUESTS": "1"}
    srv = ServerProcess(home, "--no-worker", env=env).wait_ready()
    try:
        client = srv.client()
        ask(client, "tiny-llama", "warm up")

        def long_request(_):
            try:
                ask(client, "tiny-llama", "go", max_tokens=200)
                return None
            except openai.RateLimitError as exc:
                return exc

        with ThreadPoolExecutor(5) as pool:
            results = list(pool.map(long_request, range(5)))
        limited = [r for r in results if r is not None]
        assert limited and limited[0].response.headers.get("retry-after") == "1"
        assert any(r is None for r in results)
    finally:
        srv.stop()


def test_cli_chat_with_fine_tuned_model_locally_and_through_the_server(server, monkeypatch):
    from helpers import run_cli

    expected = ask(server.client(), ADAPTERS[1], "hello", max_tokens=8)
    remote = run_cli("chat", ADAPTERS[1], "-m", "hello", "--max-tokens", "8", "--base-url", server.base_url)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == expected + "\n"
    monkeypatch.setenv("TUNELOOP_HOME", str(server.home))
    local = run_cli("chat", ADAPTERS[1], "-m", "hello", "--max-tokens", "8")
    assert local.returncode == 0, local.stderr
    assert local.stdout == expected + "\n"


def test_shared_prompt_prefix_is_served_from_the_cache(server):
    client = server.client()
    system = {"role": "system", "content": "You answer questions about a smart home. " * 8}
    replies = [
        client.chat.completions.create(
            model=ADAPTERS[2], messages=[system, {"role": "user", "content": question}], max_tokens=4, temperature=0
        )
        for question in ("Lights on?", "Heating off?")
    ]
    first, second = (r.usage.prompt_tokens_details.cached_tokens for r in replies)
    assert second > first and second >= 60  # the long system prompt was computed once
    alone = ServerProcess(server.home, "--no-worker").wait_ready()  # a fresh cache answers the same
    try:
        fresh = alone.client().chat.completions.create(
            model=ADAPTERS[2], messages=[system, {"role": "user", "content": "Heating off?"}], max_tokens=4,
            temperature=0,
        )  # fmt: skip
    finally:
        alone.stop()
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert fresh.choices[0].message.content == replies[1].choices[0].message.content
