"""The data validator: every error code at its line, warnings, token statistics, estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.data.render import ChatRenderer
from tuneloop.data.validate import Histogram, validate_file

SYSTEM = {"role": "system", "content": "Answer briefly."}


def chat(i: int = 0, **extra) -> dict:
    return {
        "messages": [
            SYSTEM,
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
        **extra,
    }


def write(tmp_path: Path, lines: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    with path.open("wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            f.write(b"\n")
    return path


def valid(n: int = 10) -> list:
    return [chat(i) for i in range(n)]


@pytest.fixture(scope="module")
def renderer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return ChatRenderer(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir))


def codes_at(report) -> list[tuple[int | None, str]]:
    return [(e.line, e.code) for e in report.errors]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def call(name: str = "get_weather", args: str = '{"city": "Paris"}', id: str = "c1") -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def tool_example(calls: list, tool_call_id: str = "c1", tools=TOOLS) -> dict:
    ex = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": calls},
            {"role": "tool", "tool_call_id": tool_call_id, "content": "21C"},
            {"role": "assistant", "content": "21C and sunny."},
        ]
    }
    if tools is not None:
        ex["tools"] = tools
    return ex


def msgs(*messages) -> dict:
    return {"messages": list(messages)}


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}

BROKEN = [
    ("invalid_json", b'{"messages": [}'),
    ("invalid_encoding", b'{"messages": "\xff\xfe"}'),
    ("data_type", [1, 2, 3]),
    ("data_type", msgs(U, "not a message", A)),
    ("data_type", {"prompt": "mixed", "completion": "formats"}),
    ("missing_messages_list", {"messages": "hello"}),
    ("missing_messages_list", {"messages": []}),
    ("missing_messages_list", {"conversation": []}),
    ("message_missing_key", msgs({"content": "no role"}, A)),
    (
        "message_missing_key",
        msgs(U, {"role": "assistant", "tool_calls": [call()]}, {"role": "tool", "content": "x"}, A),
    ),
    ("message_unrecognized_key", msgs(U, {**A, "extra": 1})),
    ("unrecognized_role", msgs({"role": "robot", "content": "beep"}, A)),
    ("missing_content", msgs({"role": "user"}, A)),
    ("missing_content", msgs({"role": "user", "content": None}, A)),
    ("missing_content", msgs({"role": "user", "content": ""}, A)),
    ("missing_content", msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, A)),
    ("missing_content", msgs(U, {"role": "assistant", "content": 42})),
    ("example_missing_assistant_message", msgs(SYSTEM, U)),
    ("invalid_weight", msgs(U, {**A, "weight": 2})),
    ("invalid_weight", msgs(U, {**A, "weight": True})),
    ("invalid_weight", msgs({**U, "weight": 1}, A)),
    ("no_trainable_tokens", msgs(U, {**A, "weight": 0})),
    ("invalid_tool_call", tool_example([call(args="{not json")])),
    ("invalid_tool_call", tool_example([call()], tool_call_id="unknown")),
    ("invalid_tool_call", tool_example([call(name="not_a_tool")])),
    ("invalid_tool_call", tool_example([call()], tools=None)),
    ("invalid_tool_call", tool_example([{"type": "function"}])),
    ("invalid_tool_call", tool_example([call(args={"city": "Paris"})])),
]


@pytest.mark.parametrize(("code", "bad"), BROKEN, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BROKEN)])
def test_each_error_code_is_reported_at_its_line(tmp_path, code, bad):
    lines = valid(10)
    lines.insert(4, bad)  # line 5
    report = validate_file(write(tmp_path, lines))
    assert (5, code) in codes_at(report), report.errors
    assert {line for line, _ in codes_at(report)} == {5}
    assert not report.ok and report.n_examples == 11


def test_valid_file_has_no_errors(tmp_path):
    report = validate_file(write(tmp_path, valid(12)))
    assert report.ok and report.format == "chat" and report.n_examples == 12
    assert report.errors == [] and report.warnings == []


def test_valid_tool_calling_example(tmp_path):
    report = validate_file(write(tmp_path, valid(10) + [tool_example([call()])]))
    assert report.ok, report.errors


def test_parallel_tool_calls_false_allows_one_call_per_turn(tmp_path):
    two = tool_example([call(), call(args='{"city": "Rome"}', id="c2")])
    one = tool_example([call()])
    report = validate_file(write(tmp_path, valid(10) + [{**one, "parallel_tool_calls": False}, two,
                                                         {**two, "parallel_tool_calls": False}]))  # fmt: skip
    assert codes_at(report) == [(13, "invalid_tool_call")]
    assert "makes 2 tool calls, but parallel_tool_calls is false" in report.errors[0].message


def test_legacy_function_calling(tmp_path):
    ex = {
        "functions": [{"name": "get_weather", "parameters": {}}],
        "messages": [
            U,
            {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": "21C"},
            A,
        ],
    }
    assert validate_file(write(tmp_path, valid(10) + [ex])).ok


def test_too_few_examples_is_a_file_level_error(tmp_path):
    report = validate_file(write(tmp_path, valid(7)))
    assert codes_at(report) == [(None, "too_few_examples")]
    assert "7 example(s)" in report.errors[0].message


def test_blank_lines_are_ignored_but_line_numbers_kept(tmp_path):
    lines = valid(10)
    lines[2:2] = [b"", b"   "]
    lines.insert(6, b"oops")
    assert codes_at(validate_file(write(tmp_path, lines))) == [(7, "invalid_json")]


def test_every_problem_in_a_line_is_reported(tmp_path):
    bad = msgs({"role": "robot", "content": "x"}, {**A, "weight": 5, "foo": 1})
    report = validate_file(write(tmp_path, valid(10) + [bad]))
    assert sorted(c for _, c in codes_at(report)) == ["invalid_weight", "message_unrecognized_key", "unrecognized_role"]


def test_duplicate_and_missing_system_warnings(tmp_path):
    lines = valid(10) + [chat(3), msgs(U, A)]
    report = validate_file(write(tmp_path, lines))
    assert report.ok
    warnings = {(w.line, w.code) for w in report.warnings}
    assert (11, "duplicate_example") in warnings
    assert (12, "missing_system_message") in warnings
    assert "line 4" in next(w.message for w in report.warnings if w.code == "duplicate_example")


def test_preference_format(tmp_path):
    good = {
        "input": {"messages": [U]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
    bad = {**good, "preferred_output": [{"role": "user", "content": "x"}]}
    report = validate_file(write(tmp_path, [good] * 10 + [bad]))
    assert report.format == "preference"
    assert codes_at(report) == [(11, "unrecognized_role")]


def test_completion_format(tmp_path):
    good = [{"prompt": f"2+{i}=", "completion": f" {2 + i}"} for i in range(10)]
    report = validate_file(write(tmp_path, good + [{"prompt": "x", "completion": ""}, {"prompt": "y"}]))
    assert report.format == "completion"
    assert codes_at(report) == [(11, "missing_content"), (12, "message_missing_key")]


def test_token_statistics_match_the_trainer_rendering(tmp_path, renderer):
    lines = valid(10)
    # a 135M-parameter model: a smaller one trains so fast that the estimate rounds to 0.0 s
    report = validate_file(write(tmp_path, lines), renderer, limit=8192, n_params=135_000_000)
    rendered = [renderer.render(ex["messages"]) for ex in lines]
    totals = sorted(len(r.input_ids) for r in rendered)
    trained = sorted(r.n_trained for r in rendered)
    s = report.stats
    assert s.total_tokens.min == totals[0] and s.total_tokens.max == totals[-1]
    assert s.trained_tokens.mean == round(sum(trained) / 10, 2)
    assert s.messages_per_example.median == 3
    assert s.dataset_tokens == sum(totals)
    # 10 examples: 100 // 10 = 10 epochs; trained tokens = dataset tokens x epochs
    assert report.estimate.n_epochs == 10
    assert report.estimate.trained_tokens == 10 * sum(totals)
    assert report.estimate.seconds > 0


def test_truncation_warning_and_limit(tmp_path, renderer):
    long = chat(0)
    long["messages"][1]["content"] = "word " * 300
    report = validate_file(write(tmp_path, valid(10) + [long]), renderer, limit=64)
    assert [(w.line, w.code) for w in report.warnings] == [(11, "too_many_tokens")]
    assert "leaving no trained tokens" in report.warnings[0].message
    assert report.stats.n_truncated == 1
    assert report.stats.total_tokens.max > 64
    assert (
        report.stats.dataset_tokens
        == sum(min(len(renderer.render(e["messages"]).input_ids), 64) for e in valid(10)) + 64
    )


def test_histogram_quantiles():
    h = Histogram()
    for v in range(1, 101):
        h.add(v)
    d = h.summary()
    assert (d.min, d.max, d.median, d.p5, d.p95, d.mean) == (1, 100, 50, 5, 95, 50.5)
