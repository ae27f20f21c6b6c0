"""``tuneloop.distill``: the answer cache, student prompts, drop reasons, retries (a fake transport under
the real ``openai`` client; waits are recorded, never slept) and the run that ties them together."""

from __future__ import annotations

import importlib
import json
import threading
from datetime import UTC, datetime
from email.utils import format_datetime

import openai
import pytest

from tuneloop.distill.cache import AnswerCache, request_key
from tuneloop.distill.examples import (
    Answer,
    Drop,
    ExampleSet,
    Prompt,
    PromptsFileError,
    drop_reason,
    parse_prompt,
    read_prompts,
    student_messages,
)
from tuneloop.distill.run import NothingKeptError, StudentOptions, distill_prompts, write_dataset
from tuneloop.distill.teacher import (
    RetryPolicy,
    Sampling,
    Teacher,
    TeacherError,
    TeacherRequestError,
    TeacherUnreachableError,
    retry_after_seconds,
    teacher_request,
)

#: The HTTP library the installed openai client is built on (httpx, or its successor httpx2).
http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


def completion(content: str | None = "an answer", finish_reason: str = "stop", **message) -> dict:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "teacher",
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content, **message}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }  # fmt: skip


class FakeTeacher:
    """A teacher endpoint: answers each request with ``reply(body, n)`` (a status and a JSON body, an
    exception to raise, or a dict to answer with 200); records the bodies and the waits asked for."""

    def __init__(self, reply=None, max_retries: int = 3):
        self.reply = reply or (lambda body, n: completion(f"answer to {body['messages'][-1]['content']}"))
        self.bodies: list[dict] = []
        self.slept: list[float] = []
        self._lock = threading.Lock()
        client = openai.OpenAI(
            base_url="http://teacher.test/v1", api_key="k", max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=http.MockTransport(self._handle)),
        )  # fmt: skip
        self.teacher = Teacher(client, RetryPolicy(max_retries), sleep=self.slept.append, jitter=lambda: 0.0)

    def _handle(self, request):
        with self._lock:
            body = json.loads(request.content)
            self.bodies.append(body)
            n = len(self.bodies)
        result = self.reply(body, n)
        if isinstance(result, Exception):
            raise result
        if isinstance(result, tuple):
            status, payload, headers = (*result, {})[:3]
            return http.Response(status, json=payload, headers=headers)
        return http.Response(200, json=result)


def prompts(n: int, system: str = "A long instruction prompt.") -> list[Prompt]:
    return [
        Prompt(f"p:{i}", [{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}])
        for i in range(n)
    ]


# --- the cache -------------------------------------------------------------------------------------


def test_a_second_run_asks_only_what_the_first_did_not_finish(tmp_path):
    cache_path = tmp_path / "cache.jsonl"
    fake = FakeTeacher()
    items = prompts(6)
    first = prompts(6)[:4]  # a first run that got through four prompts
    _, s1 = distill_prompts(first, fake.teacher, "teacher", AnswerCache(cache_path), concurrency=2)
    assert (s1.asked, s1.cached, s1.teacher_attempts) == (4, 0, 4)
    examples, s2 = distill_prompts(items, fake.teacher, "teacher", AnswerCache(cache_path), concurrency=2)
    assert (s2.asked, s2.cached, s2.kept) == (2, 4, 6)
    assert sorted(b["messages"][-1]["content"] for b in fake.bodies) == [f"q{i}" for i in range(6)]  # once each
    assert [e["messages"][-1]["content"] for e in examples.examples] == [f"answer to q{i}" for i in range(6)]
    _, s3 = distill_prompts(items, fake.teacher, "teacher", AnswerCache(cache_path))
    assert (s3.asked, s3.cached, s3.teacher_attempts, len(fake.bodies)) == (0, 6, 0, 6)


def test_a_line_cut_short_by_a_kill_is_skipped_and_the_next_answer_starts_a_fresh_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = AnswerCache(path)
    cache.add("a", Answer({"role": "assistant", "content": "A"}, "stop"))
    with path.open("ab") as f:
        f.write(b'{"key": "b", "message": {"role": "assis')  # killed mid-write
    reread = AnswerCache(path)
    assert reread.corrupt_lines == 1 and list(reread.answers) == ["a"]
    reread.add("c", Answer({"role": "assistant", "content": "C"}, "stop"))
    again = AnswerCache(path)
    assert again.corrupt_lines == 1 and sorted(again.answers) == ["a", "c"]
    assert again.get("c") == Answer({"role": "assistant", "content": "C"}, "stop")


def test_the_key_covers_the_model_and_the_sampling():
    p = prompts(1)[0]
    key = request_key(teacher_request("m", p, Sampling()))
    assert key == request_key(teacher_request("m", Prompt("elsewhere:9", p.messages), Sampling()))
    assert key != request_key(teacher_request("other", p, Sampling()))
    assert key != request_key(teacher_request("m", p, Sampling(temperature=0.7)))
    assert key != request_key(teacher_request("m", p, Sampling(max_tokens=10)))


def test_identical_prompts_are_asked_once(tmp_path):
    fake = FakeTeacher()
    examples, summary = distill_prompts(prompts(1) * 3, fake.teacher, "t", AnswerCache(tmp_path / "c.jsonl"))
    assert len(fake.bodies) == 1 and summary.kept == 1 and summary.dropped["duplicate"] == 2


# --- student prompts -------------------------------------------------------------------------------

FEWSHOT = [
    {"role": "system", "content": "Long rules..."},
    {"role": "developer", "content": "More rules."},
    {"role": "user", "content": "example question"},
    {"role": "assistant", "content": "example answer"},
    {"role": "user", "content": "real question"},
]


def test_the_student_system_replaces_every_system_message():
    got = student_messages(FEWSHOT, "Be brief.")
    assert got == [{"role": "system", "content": "Be brief."}] + FEWSHOT[2:]


def test_last_turn_only_drops_the_fewshot_turns_but_keeps_the_current_tool_round():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = FEWSHOT + [
        {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    got = student_messages(messages, "Be brief.", last_turn_only=True)
    assert [m["role"] for m in got] == ["system", "user", "assistant", "tool"]
    assert got[2] == {"role": "assistant", "tool_calls": [call]}  # nulls and non-training keys go
    no_system = student_messages(FEWSHOT, last_turn_only=True)
    assert no_system == [FEWSHOT[0], {"role": "system", "content": "More rules."}, FEWSHOT[-1]]
    assert student_messages(FEWSHOT)[2:] == FEWSHOT[2:]  # the history is kept by default


# --- drops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "response_format", "expected"),
    [
        (Answer({"content": "fine"}, "stop"), None, None),
        (Answer({"content": "cut"}, "length"), None, None),
        (Answer({"content": "..."}, "content_filter"), None, Drop.refusal),
        (Answer({"content": None, "refusal": "I can't help with that."}, "stop"), None, Drop.refusal),
        (Answer({"content": "  "}, "stop"), None, Drop.refusal),
        (Answer({"content": '{"a": 1'}, "stop"), {"type": "json_object"}, Drop.invalid_json),
        (Answer({"content": '{"a": 1}'}, "stop"), {"type": "json_schema", "json_schema": {}}, None),
        (Answer({"content": "not json"}, "stop"), {"type": "text"}, None),
        (Answer({"content": None, "tool_calls": [{"id": "c"}]}, "tool_calls"), {"type": "json_object"}, None),
    ],
)
def test_drop_reasons(answer, response_format, expected):
    got = drop_reason(answer, response_format)
    assert (got[0] if got else None) == expected


def test_the_example_set_counts_each_reason_and_keeps_tool_calls():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "index": 0}
    examples = ExampleSet()
    p = Prompt("x:1", [{"role": "user", "content": "hi"}], {"tools": tools})
    assert examples.add(p, p.messages, Answer({"content": None, "tool_calls": [call]}, "tool_calls"))
    assert examples.examples[0] == {
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "tool_calls": [{k: v for k, v in call.items() if k != "index"}]}],
        "tools": tools,
    }  # fmt: skip
    assert not examples.add(p, p.messages, Answer({"content": None, "tool_calls": [call]}, "tool_calls"))
    bad_call = {**call, "function": {"name": "g", "arguments": "{}"}}
    assert not examples.add(p, p.messages, Answer({"tool_calls": [bad_call]}, "tool_calls"))
    assert not examples.add(p, p.messages, Answer({"content": ""}, "stop"))
    assert not examples.add(p, p.messages, None, "HTTP 500 after 3 attempts: boom")
    assert examples.drops == {"teacher_error": 1, "refusal": 1, "invalid_json": 0, "duplicate": 1, "validation": 1}
    assert [(d.source, d.reason) for d in examples.dropped] == [
        ("x:1", Drop.duplicate), ("x:1", Drop.validation), ("x:1", Drop.refusal), ("x:1", Drop.teacher_error),
    ]  # fmt: skip
    assert "not in tools" in examples.dropped[1].detail


# --- the teacher's retries -------------------------------------------------------------------------


def test_a_429_waits_as_long_as_retry_after_says():
    fake = FakeTeacher(lambda body, n: (429, {"error": {"message": "slow down"}}, {"retry-after": "7"}) if n < 3
                       else completion("ok"))  # fmt: skip
    answer, usage = fake.teacher.ask(teacher_request("t", prompts(1)[0], Sampling()))
    assert answer.message["content"] == "ok" and usage["total_tokens"] == 5
    assert fake.slept == [7.0, 7.0] and fake.teacher.attempts == 3 and fake.teacher.retries == 2


def test_5xx_and_connection_errors_back_off_exponentially_then_give_up():
    fake = FakeTeacher(lambda body, n: (503, {"error": {"message": "busy"}}), max_retries=3)
    with pytest.raises(TeacherRequestError, match="HTTP 503 after 4 attempts: busy"):
        fake.teacher.ask({"model": "t", "messages": [{"role": "user", "content": "x"}]})
    assert fake.slept == [0.5, 1.0, 2.0]  # base 1 s doubled, times the jitter factor 0.5 (jitter 0)
    down = FakeTeacher(lambda body, n: http.ConnectError("connection refused"), max_retries=2)
    with pytest.raises(TeacherUnreachableError, match="cannot be reached .* after 3 attempts"):
        down.teacher.ask({"model": "t", "messages": [{"role": "user", "content": "x"}]})
    assert down.slept == [0.5, 1.0] and down.teacher.attempts == 3


def test_client_errors_are_not_retried():
    bad = FakeTeacher(lambda body, n: (400, {"error": {"message": "context too long"}}))
    with pytest.raises(TeacherRequestError, match="HTTP 400: context too long"):
        bad.teacher.ask({"model": "t", "messages": []})
    refused = FakeTeacher(lambda body, n: (401, {"error": {"message": "bad key"}}))
    refused.teacher.key_hint = "set $OPENAI_API_KEY"
    with pytest.raises(TeacherError, match=r"refused the key \(HTTP 401\); set \$OPENAI_API_KEY"):
        refused.teacher.ask({"model": "t", "messages": []})
    assert len(bad.bodies) == len(refused.bodies) == 1 and bad.slept == refused.slept == []


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    when = datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert retry_after_seconds({"retry-after": format_datetime(when, usegmt=True)}, now=when.timestamp() - 10) == 10
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None
    assert RetryPolicy(cap=5).backoff(10, 1.0) == 5.0


def test_a_failed_prompt_is_dropped_while_an_unreachable_teacher_stops_the_run(tmp_path):
    flaky = FakeTeacher(lambda body, n: (500, {}) if body["messages"][-1]["content"] == "q1" else completion("ok"),
                        max_retries=1)  # fmt: skip
    examples, summary = distill_prompts(prompts(3), flaky.teacher, "t", AnswerCache(tmp_path / "a.jsonl"))
    assert summary.kept == 2 and summary.dropped["teacher_error"] == 1 and summary.retries == 1
    assert (
        summary.dropped_examples[0]["source"] == "p:1"
        and "HTTP 500 after 2 attempts" in (summary.dropped_examples[0]["detail"])
    )
    assert len(AnswerCache(tmp_path / "a.jsonl")) == 2  # failures are not cached: the next run retries them

    def half_then_down(body, n):
        return completion("ok") if body["messages"][-1]["content"] in ("q0", "q1") else http.ConnectError("down")

    down = FakeTeacher(half_then_down, max_retries=1)
    cache = tmp_path / "b.jsonl"
    with pytest.raises(TeacherUnreachableError):
        distill_prompts(prompts(6), down.teacher, "t", AnswerCache(cache), concurrency=1)
    assert len(AnswerCache(cache)) == 2  # what finished is kept


# --- prompts files and the output ------------------------------------------------------------------


def test_a_prompt_line_loses_its_old_answer_and_keeps_its_request_options():
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "old"}],
            "response_format": {"type": "json_object"}, "tools": [], "metadata": {"ignored": "yes"}}  # fmt: skip
    p = parse_prompt(line, "f.jsonl:1")
    assert p.messages == [{"role": "user", "content": "q"}]
    assert p.options == {"response_format": {"type": "json_object"}, "tools": []}
    for bad, why in (({"messages": [{"role": "assistant", "content": "a"}]}, "no user message"),
                     ({"messages": "hi"}, "non-empty 'messages' list"), ([1], "JSON object")):  # fmt: skip
        with pytest.raises(PromptsFileError, match=f"f.jsonl:7: .*{why}"):
            parse_prompt(bad, "f.jsonl:7")


def test_a_broken_prompts_line_names_its_number(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n\n{"messages": [\n')
    with pytest.raises(PromptsFileError, match=r"prompts.jsonl:3: not valid JSON"):
        read_prompts(path)


def test_the_kept_examples_are_validated_and_split(tmp_path):
    fake = FakeTeacher()
    student = StudentOptions(system="Short.")
    examples, summary = distill_prompts(prompts(20), fake.teacher, "t", AnswerCache(tmp_path / "c"), student=student)
    write_dataset(examples, tmp_path / "out", summary, valid_fraction=0.2)
    assert (summary.kept, summary.train, summary.valid) == (20, 16, 4)
    assert summary.validation_errors == {} and summary.validation_warnings == {}
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert all(e["messages"][0] == {"role": "system", "content": "Short."} for e in train)
    assert fake.bodies[0]["messages"][0]["content"] == "A long instruction prompt."  # the teacher saw the long one

    few, few_summary = distill_prompts(prompts(3), fake.teacher, "t", AnswerCache(tmp_path / "c"))
    write_dataset(few, tmp_path / "few", few_summary)
    assert few_summary.validation_errors == {"too_few_examples": 1}

    with pytest.raises(NothingKeptError, match="no example was kept"):
        write_dataset(ExampleSet(), tmp_path / "none", few_summary)
