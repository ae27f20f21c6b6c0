"""Converting Alpaca, ShareGPT, prompt/completion and CSV files into OpenAI chat JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tuneloop.cli import data_tools
from tuneloop.data.convert import (
    ConvertError,
    ConvertOptions,
    LineIssue,
    NothingConvertedError,
    convert_file,
    detect_source_format,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def read_chat(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def user_assistant(user: str, assistant: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


# --- Alpaca ----------------------------------------------------------------------------------


def test_alpaca(tmp_path: Path):
    src = write(
        tmp_path / "alpaca.jsonl",
        jsonl(
            {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!"},
            {"instruction": "Be terse.", "output": "Ok.", "system": "You are terse."},
            {"instruction": "And now?", "output": "Still 4.", "history": [["2+2?", "4"]]},
        ),
    )
    report = convert_file(src, tmp_path / "out.jsonl")
    assert (report.source_format, report.read, report.written, report.skipped) == ("alpaca", 4, 4, [])
    assert read_chat(tmp_path / "out.jsonl") == [
        user_assistant("Add the numbers.\n\n2 and 2", "4"),
        user_assistant("Say hi.", "Hi!"),
        user_assistant("Be terse.", "Ok.", system="You are terse."),
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And now?"},
                {"role": "assistant", "content": "Still 4."},
            ]
        },
    ]


def test_alpaca_broken_lines_are_skipped_with_line_numbers(tmp_path: Path):
    src = write(
        tmp_path / "alpaca.jsonl",
        '{"instruction": "Ok", "output": "fine"}\n'
        "\n"  # blank: ignored, not reported
        '{"instruction": "cut off", "out\n'
        '{"instruction": "No output"}\n'
        '{"instruction": "Empty", "output": "  "}\n'
        '{"instruction": "", "input": "", "output": "x"}\n'
        '{"instruction": "List", "output": ["a", "b"]}\n'
        "[1, 2]\n"
        '{"instruction": "NaN", "output": NaN}\n'
        '{"instruction": "History", "output": "x", "history": [["only one"]]}\n'
        '{"instruction": "\\ud800", "output": "lone surrogate"}\n'
        '{"instruction": "Last", "output": "also fine"}',
    )
    report = convert_file(src, tmp_path / "out.jsonl")
    assert report.written == 2 and report.read == 11 and report.skipped_count == 9
    assert report.skipped == [
        LineIssue(3, "not valid JSON: Unterminated string starting at (column 28)"),
        LineIssue(4, "missing field 'output'"),
        LineIssue(5, "empty 'output'"),
        LineIssue(6, "empty 'instruction' and 'input'"),
        LineIssue(7, "field 'output' is not a string"),
        LineIssue(8, "not a JSON object"),
        LineIssue(9, "not valid JSON: NaN is not valid JSON"),
        LineIssue(10, "field 'history' is not a list of [user, assistant] pairs"),
        LineIssue(11, "contains an invalid Unicode surrogate"),
    ]
    assert read_chat(tmp_path / "out.jsonl") == [user_assistant("Ok", "fine"), user_assistant("Last", "also fine")]


def test_default_system_prompt_only_where_missing(tmp_path: Path):
    src = write(
        tmp_path / "a.jsonl",
        jsonl({"instruction": "q", "output": "a"}, {"instruction": "q", "output": "a", "system": "own"}),
    )
    convert_file(src, tmp_path / "out.jsonl", options=ConvertOptions(system="default"))
    assert read_chat(tmp_path / "out.jsonl") == [user_assistant("q", "a", "default"), user_assistant("q", "a", "own")]


def test_alpaca_json_array_is_streamed_with_line_numbers(tmp_path: Path):
    src = write(
        tmp_path / "alpaca_data.json",
        '\ufeff[\n  {"instruction": "One", "output": "1"},\n  {"instruction": "Two"},\n'
        '  {"instruction": "Three",\n   "output": "3"}\n]\n',
    )
    report = convert_file(src, tmp_path / "out.jsonl")
    assert report.source_format == "alpaca" and report.written == 2
    assert report.skipped == [LineIssue(3, "missing field 'output'")]
    assert read_chat(tmp_path / "out.jsonl") == [user_assistant("One", "1"), user_assistant("Three", "3")]


def test_truncated_json_array_stops_with_a_reason(tmp_path: Path):
    src = write(tmp_path / "a.json", '[{"instruction": "One", "output": "1"},\n {"instruction": "Tw')
    report = convert_file(src, tmp_path / "out.jsonl")
    assert report.written == 1
    assert report.skipped == [
        LineIssue(2, "not valid JSON: Unterminated string starting at (line 2); the rest was not read")
    ]


# --- ShareGPT --------------------------------------------------------------------------------


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": who, "value": text} for who, text in pairs]


def test_sharegpt(tmp_path: Path):
    src = write(
        tmp_path / "sharegpt.jsonl",
        jsonl(
            {"conversations": turns(("system", "Be kind."), ("human", "hi"), ("gpt", "hello"), ("user", "bye"))},
            {"conversations": turns(("human", "2+2?"), ("chatgpt", "4"), ("human", "3+3?"), ("assistant", "6"))},
            {"system": "Top-level system.", "conversations": turns(("human", "q"), ("gpt", "a"))},
        ),
    )
    report = convert_file(src, tmp_path / "out.jsonl")
    assert (report.source_format, report.written, report.skipped) == ("sharegpt", 3, [])
    assert read_chat(tmp_path / "out.jsonl") == [
        {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "3+3?"},
                {"role": "assistant", "content": "6"},
            ]
        },
        user_assistant("q", "a", "Top-level system."),
    ]


def test_sharegpt_function_calls_become_tool_calls(tmp_path: Path):
    call = json.dumps({"name": "weather", "arguments": {"city": "Paris"}})
    example = {
        "conversations": turns(
            ("human", "Weather in Paris?"), ("function_call", call), ("observation", '{"temp": 21}'), ("gpt", "21 C.")
        ),
        "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}]),
    }
    src = write(tmp_path / "tools.jsonl", jsonl(example))
    report = convert_file(src, tmp_path / "out.jsonl")
    assert report.written == 1
    assert read_chat(tmp_path / "out.jsonl") == [
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                {"role": "assistant", "content": "21 C."},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        }
    ]


def test_sharegpt_broken_lines_are_skipped_with_reasons(tmp_path: Path):
    src = write(
        tmp_path / "sharegpt.jsonl",
        jsonl(
            {"conversations": turns(("human", "ok"), ("gpt", "fine"))},
            {"conversations": turns(("human", "hi"), ("bing", "hello"))},
            {"conversations": turns(("human", "hi"), ("observation", "42"), ("gpt", "x"))},
            {"conversations": turns(("human", "hi"), ("function_call", "not json"))},
            {"conversations": turns(("human", "hi"), ("gpt", ""))},
            {"conversations": turns(("human", "only a question"))},
            {"conversations": []},
            {"conversations": "hi"},
            {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
            {"conversations": turns(("human", "q"), ("gpt", "a")), "tools": "{not json"},
        )
        + "{broken\n",
    )
    report = convert_file(src, tmp_path / "out.jsonl", source_format="sharegpt")
    assert report.written == 1
    assert report.skipped == [
        LineIssue(2, "turn 2 has unknown role 'bing'"),
        LineIssue(3, "turn 2 (observation) follows no function_call"),
        LineIssue(4, "turn 2 (function_call) is not a JSON object with a function 'name'"),
        LineIssue(5, "empty turn 2 ('gpt')"),
        LineIssue(6, "no assistant message"),
        LineIssue(7, "empty 'conversations'"),
        LineIssue(8, "field 'conversations' is not a list"),
        LineIssue(9, "turn 1 has no string 'value'"),
        LineIssue(10, "field 'tools' is not valid JSON"),
        LineIssue(11, "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ]


# --- prompt / completion ---------------------------------------------------------------------


def test_completion(tmp_path: Path):
    src = write(
        tmp_path / "legacy.jsonl",
        jsonl(
            {"prompt": "Capital of France?\n\n###\n\n", "completion": " Paris END"},
            {"prompt": "No completion"},
            {"prompt": "", "completion": "x"},
            {"prompt": 3, "completion": "x"},
        ),
    )
    report = convert_file(src, tmp_path / "out.jsonl", options=ConvertOptions(system="Answer."))
    assert report.source_format == "completion" and report.written == 1
    assert report.skipped == [
        LineIssue(2, "missing field 'completion'"),
        LineIssue(3, "empty 'prompt'"),
        LineIssue(4, "field 'prompt' is not a string"),
    ]
    assert read_chat(tmp_path / "out.jsonl") == [
        user_assistant("Capital of France?\n\n###\n\n", " Paris END", "Answer.")
    ]


# --- CSV -------------------------------------------------------------------------------------


def test_csv_with_default_columns(tmp_path: Path):
    src = write(
        tmp_path / "faq.csv",
        'Question,Answer,notes\nWhat is 2+2?,4,easy\n"Quoted, with comma","Two\nlines",\n,,\nNo answer,,x\nshort,row\n',
    )
    report = convert_file(src, tmp_path / "out.jsonl")
    assert (report.source_format, report.unit, report.read, report.written) == ("csv", "row", 4, 2)
    assert report.skipped == [LineIssue(5, "empty 'Answer'"), LineIssue(6, "has 2 fields, the header has 3")]
    assert read_chat(tmp_path / "out.jsonl") == [
        user_assistant("What is 2+2?", "4"),
        user_assistant("Quoted, with comma", "Two\nlines"),
    ]


def test_csv_row_too_large_for_the_csv_module_is_skipped(tmp_path: Path):
    src = write(tmp_path / "big.csv", f"prompt,completion\nq,{'x' * 200_000}\nq,a\n")
    report = convert_file(src, tmp_path / "out.jsonl")
    assert report.skipped == [LineIssue(2, "not valid CSV (field larger than field limit (131072))")]
    assert read_chat(tmp_path / "out.jsonl") == [user_assistant("q", "a")]


def test_csv_with_named_columns_and_system_column(tmp_path: Path):
    src = write(tmp_path / "data.txt", "q;a;sys\nhi;hello;Be kind.\nbye;see you;\n")
    options = ConvertOptions(
        system="Default.", user_column="q", assistant_column="a", system_column="sys", delimiter=";"
    )
    report = convert_file(src, tmp_path / "out.jsonl", source_format="CSV", options=options)
    assert report.written == 2 and report.skipped == []
    assert read_chat(tmp_path / "out.jsonl") == [
        user_assistant("hi", "hello", "Be kind."),
        user_assistant("bye", "see you", "Default."),
    ]


def test_tsv_is_detected_with_tab_delimiter(tmp_path: Path):
    src = write(tmp_path / "data.tsv", "prompt\tcompletion\nhi, there\thello\n")
    convert_file(src, tmp_path / "out.jsonl")
    assert read_chat(tmp_path / "out.jsonl") == [user_assistant("hi, there", "hello")]


def test_csv_column_errors(tmp_path: Path):
    src = write(tmp_path / "data.csv", "a,b\n1,2\n")
    with pytest.raises(ConvertError, match="cannot tell which column of .* holds the user message; pass --user-column"):
        convert_file(src, tmp_path / "out.jsonl")
    with pytest.raises(ConvertError, match=r"has no column 'c' \(columns: a, b\)"):
        convert_file(src, tmp_path / "out.jsonl", options=ConvertOptions(user_column="a", assistant_column="c"))
    assert not (tmp_path / "out.jsonl").exists()


# --- detection and safety --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ({"instruction": "x", "input": "", "output": "y"}, "alpaca"),
        ({"conversations": []}, "sharegpt"),
        ({"prompt": "x", "completion": "y"}, "completion"),
    ],
)
def test_detects_format_from_first_object(tmp_path: Path, first: dict, expected: str):
    src = write(tmp_path / "data.jsonl", "\nnot json\n" + jsonl(first, {"other": 1}))
    assert detect_source_format(src) == expected


def test_detection_errors(tmp_path: Path):
    chat = write(tmp_path / "chat.jsonl", jsonl(user_assistant("q", "a")))
    with pytest.raises(ConvertError, match="already in OpenAI chat format"):
        convert_file(chat, tmp_path / "out.jsonl")
    odd = write(tmp_path / "odd.jsonl", jsonl({"question": "q", "answer": "a"}))
    with pytest.raises(ConvertError, match=r"keys of its first object \(question, answer\); pass --from"):
        convert_file(odd, tmp_path / "out.jsonl")
    junk = write(tmp_path / "junk.jsonl", "nope\n[1]\n")
    with pytest.raises(ConvertError, match="no JSON object to detect the format from"):
        convert_file(junk, tmp_path / "out.jsonl")
    with pytest.raises(ConvertError, match="unknown format 'yaml'; choose one of alpaca, sharegpt, completion, csv"):
        convert_file(odd, tmp_path / "out.jsonl", source_format="yaml")
    with pytest.raises(ConvertError, match="no such file"):
        convert_file(tmp_path / "missing.jsonl", tmp_path / "out.jsonl")


def test_never_overwrites_the_input(tmp_path: Path):
    text = jsonl({"prompt": "q", "completion": "a"})
    src = write(tmp_path / "data.jsonl", text)
    (tmp_path / "link.jsonl").symlink_to(src)
    for dest in (src, tmp_path / "sub" / ".." / "data.jsonl", tmp_path / "link.jsonl"):
        with pytest.raises(ConvertError, match="would overwrite the input"):
            convert_file(src, dest)
    assert src.read_text() == text


def test_output_replaced_atomically_and_kept_when_nothing_converts(tmp_path: Path):
    good = write(tmp_path / "good.jsonl", jsonl({"prompt": "q", "completion": "a"}))
    bad = write(tmp_path / "bad.jsonl", jsonl({"prompt": "q"}))
    dest = write(tmp_path / "out.jsonl", "old\n")
    report = convert_file(bad, dest)
    assert report.written == 0 and report.skipped == [LineIssue(1, "missing field 'completion'")]
    assert dest.read_text() == "old\n"
    convert_file(good, dest)
    assert read_chat(dest) == [user_assistant("q", "a")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out.jsonl"]


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("convert")(data_tools.convert)
    app.command("split")(data_tools.split)
    return app


def test_cli_convert_summary_lists_first_ten_skipped(tmp_path: Path, cli: typer.Typer):
    lines = [{"instruction": "q", "output": "a"}] + [{"instruction": f"q{i}"} for i in range(12)]
    src = write(tmp_path / "alpaca.jsonl", jsonl(*lines))
    result = CliRunner().invoke(cli, ["convert", str(src)])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert out[0] == f"converted 1 example (alpaca) to {tmp_path / 'alpaca.chat.jsonl'}"
    assert out[1] == "skipped 12 lines of 13:"
    assert out[2:12] == [f"  line {n}: missing field 'output'" for n in range(2, 12)]
    assert out[12:] == ["  ... and 2 more"]
    assert read_chat(tmp_path / "alpaca.chat.jsonl") == [user_assistant("q", "a")]


def test_cli_convert_options(tmp_path: Path, cli: typer.Typer):
    src = write(tmp_path / "rows.txt", "in,out\nhi,hello\n")
    dest = tmp_path / "chat.jsonl"
    args = ["convert", str(src), "-o", str(dest), "--from", "csv", "--user-column", "in"]
    result = CliRunner().invoke(cli, [*args, "--assistant-column", "out", "--system", "S"])
    assert result.exit_code == 0, result.output
    assert result.output == f"converted 1 example (csv) to {dest}\n"
    assert read_chat(dest) == [user_assistant("hi", "hello", "S")]


def test_cli_convert_errors(tmp_path: Path, cli: typer.Typer):
    bad = write(tmp_path / "bad.jsonl", jsonl({"prompt": "q"}))
    result = CliRunner().invoke(cli, ["convert", str(bad)])
    assert isinstance(result.exception, NothingConvertedError) and result.exception.exit_code == 1
    assert result.output == "skipped 1 line of 1:\n  line 1: missing field 'completion'\n"
    assert not (tmp_path / "bad.chat.jsonl").exists()
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "missing.jsonl")])
    assert isinstance(result.exception, ConvertError) and result.exception.exit_code == 2
