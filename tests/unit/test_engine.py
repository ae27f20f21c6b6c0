"""The engine: its entry point (``generate``: context check, budget), prefix caching (shared prompt
prefixes computed once, no result changed) and shutdown."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from tuneloop.engine.engine import (
    ContextLengthError,
    Detokenizer,
    Engine,
    FinishEvent,
    QueueFullError,
    Request,
    TokenEvent,
    token_budget,
)
from tuneloop.engine.grammar import json_object_grammar, json_schema_grammar
from tuneloop.engine.lora_weights import load_lora
from tuneloop.engine.quantized import max_rows
from tuneloop.engine.sampling import Sampler, SamplingParams

from helpers import run_cli


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    from tests_lora import make_adapters

    return load_lora("a0", make_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"), 1)[0])


def make_request(tokenizer, prompt: list[int], n: int = 8, adapter=None) -> tuple[Request, list[int], threading.Event]:
    tokens: list[int] = []
    done = threading.Event()

    def on_event(event) -> None:
        if isinstance(event, TokenEvent) and event.choice is not None:
            tokens.append(event.choice.token)
        elif isinstance(event, FinishEvent):
            done.set()

    params = SamplingParams(max_tokens=n, temperature=0.0)
    request = Request(list(prompt), params, Sampler(params, set()), Detokenizer(tokenizer, []), on_event, adapter)
    return request, tokens, done


def generate(engine: Engine, tokenizer, prompts: list[list[int]], adapter=None) -> list[list[int]]:
    """Submit all prompts at once; return each one's greedy tokens."""
    runs = [make_request(tokenizer, p, adapter=adapter) for p in prompts]
    for request, _, _ in runs:
        engine.submit(request)
    for _, _, done in runs:
        assert done.wait(60)
    return [tokens for _, tokens, _ in runs]


def alone(tiny, prompt: list[int], adapter=None) -> list[int]:
    engine = Engine(*tiny, max_batch=2, max_len=512)
    try:
        return generate(engine, tiny[1], [prompt], adapter)[0]
    finally:
        engine.close()


SHARED = list(range(1000, 1060))  # a long common prefix (a system prompt, few-shot examples)


def test_later_request_reuses_a_finished_prefix(tiny):
    engine = Engine(*tiny, max_batch=4, max_len=512)
    try:
        first = generate(engine, tiny[1], [SHARED + [5, 6, 7]])[0]
        assert engine.cached_prompt_tokens == 0
        second = generate(engine, tiny[1], [SHARED + [8, 9]])[0]
        assert engine.cached_prompt_tokens == len(SHARED)
        # a chat's next turn: the previous prompt and answer are cached (all but the last answer token)
        third = generate(engine, tiny[1], [[*SHARED, 5, 6, 7, *first, 11]])[0]
        assert engine.cached_prompt_tokens == len(SHARED) + len(SHARED) + 3 + len(first) - 1
    finally:
        engine.close()
    assert first == alone(tiny, SHARED + [5, 6, 7])
    assert second == alone(tiny, SHARED + [8, 9])
    assert third == alone(tiny, [*SHARED, 5, 6, 7, *first, 11])


def test_concurrent_requests_copy_a_running_prefix(tiny):
    prompts = [SHARED + [i, i + 1] for i in range(3)] + [SHARED]  # the last one is the prefix itself
    engine = Engine(*tiny, max_batch=4, max_len=512)
    try:
        outs = generate(engine, tiny[1], prompts)
        # 2nd and 3rd copy the prefix from the 1st; the 4th reuses all of it but its last token
        assert engine.cached_prompt_tokens == 2 * len(SHARED) + len(SHARED) - 1
    finally:
        engine.close()
    assert outs == [alone(tiny, p) for p in prompts]


def test_prefixes_are_not_shared_across_adapters(tiny, adapter):
    engine = Engine(*tiny, max_batch=4, max_len=512)
    try:
        base = generate(engine, tiny[1], [SHARED + [1]])[0]
        tuned = generate(engine, tiny[1], [SHARED + [1]], adapter)[0]
        assert engine.cached_prompt_tokens == 0  # the adapter's keys and values differ from the base model's
        again = generate(engine, tiny[1], [SHARED + [2]], adapter)[0]
        assert engine.cached_prompt_tokens == len(SHARED)
    finally:
        engine.close()
    assert base == alone(tiny, SHARED + [1]) and tuned == alone(tiny, SHARED + [1], adapter)
    assert again == alone(tiny, SHARED + [2], adapter)


def test_prefix_is_copied_after_the_cache_grew(tiny):
    """The cache grows (a new tensor made under inference mode) before a prefix is copied from it."""
    long_prefix = list(range(2000, 2300))  # beyond the initial 256 positions
    engine = Engine(*tiny, max_batch=3, max_len=1024)
    try:
        outs = generate(engine, tiny[1], [long_prefix + [1], long_prefix + [2]])
        assert engine.cached_prompt_tokens == len(long_prefix)
    finally:
        engine.close()
    assert outs == [alone(tiny, long_prefix + [1]), alone(tiny, long_prefix + [2])]


def test_close_with_cancel_ends_running_and_waiting_requests(tiny):
    engine = Engine(*tiny, max_batch=1, max_len=512)
    finished: list[str] = []
    runs = []
    for prompt in ([1, 2, 3], [4, 5, 6]):  # one runs, one waits for the only slot
        request, _, done = make_request(tiny[1], prompt, n=400)

        def record(event, forward=request.on_event) -> None:
            if isinstance(event, FinishEvent):
                finished.append(event.reason)
            forward(event)

        request.on_event = record
        engine.submit(request)
        runs.append(done)
    engine.close(cancel=True)
    assert all(done.wait(10) for done in runs) and finished == ["cancelled", "cancelled"]
    assert not engine.thread.is_alive()


def test_prompts_join_the_decode_steps_a_piece_a_step_and_change_nothing(tiny):
    from tuneloop.engine import native
    from tuneloop.engine.packed_weights import pack_model

    if not native.available():
        pytest.skip("prompts join decode steps only with the C kernels")
    packed = pack_model(tiny[0], "int8", activations="auto")
    limit = max_rows()  # rows a step takes: 256 on AVX-512, 32 on AVX2
    prompts = [list(range(10, 30)), list(range(40, 52)), list(range(100, 200)), list(range(60, 66))]

    def run(batch: list[list[int]], max_batch: int) -> tuple[list[list[int]], list[list[int]]]:
        engine = Engine(*tiny, max_batch=max_batch, max_len=1024, packed=packed)
        passes: list[list[int]] = []  # the tokens each sequence got in each forward pass
        step = engine.runner.step

        def counted(slots, ids, adapters):
            passes.append(list(map(len, ids)))
            return step(slots, ids, adapters)

        engine.runner.step = counted
        try:
            return generate(engine, tiny[1], batch), passes
        finally:
            engine.close()

    together, passes = run(prompts, 4)
    assert together == [run([p], 1)[0][0] for p in prompts]
    assert all(sum(rows) <= limit for rows in passes)
    # more prompt rows than a step takes: the rest wait for the next step
    many = [list(range(1000 + 100 * i, 1060 + 100 * i)) for i in range(6)]
    assert run(many, 6)[0] == [run([p], 1)[0][0] for p in many]
    # a prompt longer than a step takes, beside two others: a piece a step while they decode
    long = list(range(2000, 2000 + 2 * limit + 40))
    together, passes = run([prompts[0], prompts[1], long], 3)
    assert together == [run([p], 1)[0][0] for p in (prompts[0], prompts[1], long)]
    with_prompts = [rows for rows in passes if max(rows) > 1]
    assert len(with_prompts) >= 3 and all(sum(rows) <= limit for rows in passes)
    assert sum(size for rows in with_prompts for size in rows if size > 1) == 20 + 12 + len(long)
    assert any(rows.count(1) == 2 and max(rows) > 1 for rows in passes)  # decode rows beside a piece


def test_token_budget_is_the_request_capped_at_the_room_left():
    assert token_budget(100, 40, None) == 60
    assert token_budget(100, 40, 10) == 10
    assert token_budget(100, 40, 80) == 60
    with pytest.raises(ContextLengthError) as err:
        token_budget(100, 100, 5)
    assert (err.value.limit, err.value.prompt_tokens) == (100, 100)
    assert str(err.value) == (
        "This model's maximum context length is 100 tokens. However, your messages resulted in 100 tokens. "
        "Please reduce the length of the messages."
    )


def test_generate_checks_the_context_caps_the_answer_and_builds_the_request(tiny):
    engine = Engine(*tiny, max_batch=2, max_len=64)
    try:
        with pytest.raises(ContextLengthError):
            engine.generate(list(range(100, 164)), SamplingParams(), None, lambda event: None)
        assert engine.load == 0  # nothing queued
        events: list = []
        done = threading.Event()

        def on_event(event) -> None:
            events.append(event)
            if isinstance(event, FinishEvent):
                done.set()

        params = SamplingParams(max_tokens=10, temperature=0.0, stop=["zzz"])
        request = engine.generate(range(100, 160), params, None, on_event)
        assert done.wait(60)
        assert request.params.max_tokens == 4 and params.max_tokens == 10  # capped in a copy
        assert request.sampler.eos_ids == engine.eos_ids and request.detokenizer.stop == ["zzz"]
        assert events[-1].reason in ("length", "stop") and events[-1].completion_tokens <= 4
        grammar = json_object_grammar()
        json = engine.generate([1, 2, 3], SamplingParams(max_tokens=1, grammar=grammar), None, lambda event: None)
        assert json.sampler.constraint is not None and engine.grammar_tokenizer.vocab_size == len(tiny[1])
    finally:
        engine.close()


def test_generate_gives_the_tokens_of_a_request_built_by_hand(tiny):
    prompt = SHARED + [3, 4]
    engine = Engine(*tiny, max_batch=2, max_len=512)
    try:
        tokens: list[int] = []
        done = threading.Event()

        def on_event(event) -> None:
            if isinstance(event, TokenEvent) and event.choice is not None:
                tokens.append(event.choice.token)
            elif isinstance(event, FinishEvent):
                done.set()

        engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0), None, on_event)
        assert done.wait(60)
    finally:
        engine.close()
    assert tokens and tokens == alone(tiny, prompt)[: len(tokens)]


def test_cli_chat_too_long_is_a_one_line_error(tiny_model):
    result = run_cli("chat", tiny_model, "-m", "word " * 1100, "--max-tokens", "5")
    assert result.returncode == 1 and result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: This model's maximum context length is 1024 tokens. However, your messages")
    assert "Traceback" not in result.stderr


def test_a_constrained_request_leaves_its_batch_neighbours_alone(tiny):
    """A grammar masks its own row only: the unconstrained requests decoding beside it get the tokens
    they get alone, and it gets schema-valid JSON (greedy and sampled)."""
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}, "room": {"enum": ["hall", "kitchen"]}},
              "required": ["on", "room"]}  # fmt: skip
    prompts = [SHARED + [3], SHARED + [4]]
    engine = Engine(*tiny, max_batch=4, max_len=512)
    try:
        texts, done = ["", ""], [threading.Event(), threading.Event()]

        def collect(i: int):
            def on_event(event) -> None:
                if isinstance(event, TokenEvent):
                    texts[i] += event.text
                else:
                    done[i].set()

            return on_event

        plain = [make_request(tiny[1], p) for p in prompts]
        for temperature, i in ((0.0, 0), (1.0, 1)):
            params = SamplingParams(max_tokens=40, temperature=temperature, seed=i, grammar=json_schema_grammar(schema))
            engine.generate(SHARED + [5], params, None, collect(i))
            engine.submit(plain[i][0])
        assert all(d.wait(60) for d in done) and all(r[2].wait(60) for r in plain)
    finally:
        engine.close()
    assert [r[1] for r in plain] == [alone(tiny, p) for p in prompts]
    for text in texts:
        value = json.loads(text)
        assert set(value) == {"on", "room"} and value["room"] in ("hall", "kitchen")


def test_a_request_whose_sampling_fails_ends_alone(tiny):
    """One request's sampler raising (any device, any cause) ends that request with an error; the
    request decoding beside it in the same steps gets the tokens it gets alone."""
    prompts = [SHARED + [3], SHARED + [4]]
    engine = Engine(*tiny, max_batch=4, max_len=512)
    try:
        good, broken = make_request(tiny[1], prompts[0]), make_request(tiny[1], prompts[1])
        finish: list = []
        calls = 0

        def fail_on_third(logits, best=None):
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("penalty kernel failed")
            return Sampler.choose(broken[0].sampler, logits, best)

        broken[0].sampler.choose = fail_on_third
        on_event = broken[0].on_event
        broken[0].on_event = lambda event: (finish.append(event) if isinstance(event, FinishEvent) else None,
                                            on_event(event))  # fmt: skip
        engine.submit(good[0], broken[0])
        assert good[2].wait(60) and broken[2].wait(60)
    finally:
        engine.close()
    assert good[1] == alone(tiny, prompts[0])
    assert len(broken[1]) == 2 and finish[0].reason == "error" and "penalty kernel failed" in finish[0].error


def test_submit_queues_all_requests_or_none(tiny):
    engine = Engine(*tiny, max_batch=1, max_len=512, max_queue=3)
    try:
        blocker = make_request(tiny[1], SHARED + [3], n=400)
        engine.submit(blocker[0])
        queued = [make_request(tiny[1], SHARED + [i]) for i in range(4, 6)]
        engine.submit(*(r for r, _, _ in queued))
        with pytest.raises(QueueFullError):  # 2 more would make 4 waiting: none of them is queued
            engine.submit(*(make_request(tiny[1], SHARED + [i])[0] for i in range(6, 8)))
        assert len(engine.waiting) + len(engine.pending) + len(engine.active) <= 3
        blocker[0].cancelled.set()
        assert all(done.wait(60) for _, _, done in queued)
    finally:
        engine.close()
