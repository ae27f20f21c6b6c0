"""Tool-call grading: names, arguments, calling only when expected; references read from chat examples."""

import json

import pytest

from tuneloop.data.tools import format_tool_call
from tuneloop.evals.graders import detect_task, select_graders
from tuneloop.evals.runner import load_items, load_training_conversations, schema_check
from tuneloop.evals.tool_calls import ToolCallGrader

LIGHTS = {"type": "object", "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}},
          "required": ["room", "on"], "additionalProperties": False}  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "lights", "parameters": LIGHTS}},
         {"type": "function", "function": {"name": "play", "parameters": {"type": "object"}}}]  # fmt: skip


def calls(*pairs: tuple[str, dict], text: str = "") -> str:
    body = "".join(format_tool_call(name, args) for name, args in pairs)
    return f"{text}\n{body}" if text and body else text or body


def test_exact_name_and_argument_metrics():
    refs = [
        calls(("lights", {"room": "kitchen", "on": True})),
        calls(("lights", {"room": "hall", "on": False})),
        calls(("play", {"song": "jazz"})),
        "Hello! How can I help?",
    ]
    outs = [
        calls(("lights", {"on": True, "room": "kitchen"})),  # key order does not matter
        calls(("lights", {"room": "hall", "on": True})),  # right function, one wrong value
        "I would play jazz.",  # did not call
        calls(("play", {"song": "x"})),  # called when it should not
    ]
    result = ToolCallGrader().grade(outs, refs)
    assert result.primary == "exact_call_match" and result.scores == [1.0, 0.0, 0.0, 0.0]
    m = result.metrics
    assert m["exact_call_match"] == 0.25 and m["name_accuracy"] == 0.5
    assert m["arguments_exact"] == 0.5  # of the two answers naming the right function
    assert m["arguments_f1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["called_when_expected"] == pytest.approx(2 / 3) and m["no_call_when_expected"] == 0.0
    assert m["valid_arguments"] == 1.0


def test_parallel_calls_compare_as_a_multiset_and_bad_arguments_are_invalid():
    ref = calls(("lights", {"room": "a", "on": True}), ("lights", {"room": "b", "on": True}))
    swapped = calls(("lights", {"room": "b", "on": True}), ("lights", {"room": "a", "on": True}))
    broken = '<tool_call>\n{"name": "lights", "arguments": {"room": </tool_call>'
    result = ToolCallGrader().grade([swapped, broken], [ref, ref])
    assert result.scores == [1.0, 0.0]
    assert result.metrics["valid_arguments"] == pytest.approx(2 / 3)


def test_schema_check_counts_arguments_that_break_the_schema(tmp_path):
    path = tmp_path / "held.jsonl"
    line = {"tools": TOOLS, "messages": [{"role": "user", "content": "kitchen lights on"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "lights", "arguments": '{"room": "kitchen", "on": true}'}}]}]}  # fmt: skip
    path.write_text(json.dumps(line) + "\n")
    items = load_items(path)
    assert items[0].tools == TOOLS and items[0].reference == calls(("lights", {"room": "kitchen", "on": True}))
    check = schema_check(items)
    assert check is not None
    grader = select_graders([items[0].reference], tool_check=check)[0]
    bad = calls(("lights", {"room": "kitchen", "on": "yes"}))
    unknown = calls(("oven", {}))
    assert grader.grade([bad, unknown], [items[0].reference] * 2).metrics["valid_arguments"] == 0.0


def test_tool_references_select_the_tool_grader_and_history_keeps_calls(tmp_path):
    history = [
        {"role": "user", "content": "lights?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lights", "arguments": "{}"}}],
        },  # fmt: skip
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
        {"role": "assistant", "content": "They are on."},
    ]
    path = tmp_path / "held.jsonl"
    path.write_text(json.dumps({"tools": TOOLS, "messages": history}) + "\n")
    item = load_items(path)[0]
    assert item.reference == "They are on."
    assert item.prompt[1]["tool_calls"][0]["id"] == "c1" and item.prompt[2]["tool_call_id"] == "c1"
    shots = load_training_conversations(path)[0]
    assert shots[1]["content"] == calls(("lights", {}))
    assert detect_task([calls(("play", {})), "no call needed"]) == "tools"
    assert detect_task(["a", "b"]) != "tools"
    assert isinstance(select_graders(["x"], "tools")[0], ToolCallGrader)


def test_the_generated_smart_home_tool_task_is_valid_training_data(tmp_path):
    from tuneloop.data.validate import validate_file
    from tuneloop.quickstart.tools_task import TOOLS, write_task

    train, test = write_task(tmp_path, n_train=60, n_test=20)
    report = validate_file(train)
    assert report.ok, report.errors
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    requests = {json.loads(line)["messages"][1]["content"] for line in train.read_text().splitlines()}
    answers = [r["messages"][-1] for r in rows]
    assert len(rows) == 20 and all(r["tools"] == TOOLS for r in rows)
    assert all("tool_calls" in a or a["content"] for a in answers)
    held_out_calls = [r["messages"][1]["content"] for r, a in zip(rows, answers, strict=True) if "tool_calls" in a]
    assert held_out_calls and not requests & set(held_out_calls)  # no call request is in both files
    check = schema_check(load_items(test))
    for a in answers:
        for c in a.get("tool_calls", []):
            assert check(c["function"]["name"], json.loads(c["function"]["arguments"]))
