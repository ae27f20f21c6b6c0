"""Deterministic train/validation split of a JSONL file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tuneloop.cli import data_tools
from tuneloop.data.convert import LineIssue
from tuneloop.data.split import InvalidLinesError, SplitError, default_split_paths, split_file


def example(i: int) -> str:
    """One chat example as a JSONL line (no newline)."""
    return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def split(tmp_path: Path, src: Path, fraction: float = 0.1, seed: int = 0, dedupe: bool = False, tag: str = "out"):
    train, valid = tmp_path / f"{tag}.train.jsonl", tmp_path / f"{tag}.valid.jsonl"
    return split_file(src, train, valid, fraction, seed, dedupe), train, valid


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_exact_outputs_for_a_fixed_seed(tmp_path: Path):
    src = write_lines(tmp_path / "data.jsonl", [example(i) for i in range(6)])
    report, train, valid = split(tmp_path, src, fraction=0.5)
    assert (report.examples, report.train, report.valid, report.duplicates) == (6, 3, 3, 0)
    # pinned: a change here changes every user's existing splits
    assert lines_of(valid) == [example(1), example(3), example(4)]
    assert lines_of(train) == [example(0), example(2), example(5)]


@pytest.mark.parametrize(("n", "fraction", "n_valid"), [(10, 0.1, 1), (10, 0.25, 3), (7, 0.5, 4), (1000, 0.1, 100)])
def test_valid_count_is_round_half_up(tmp_path: Path, n: int, fraction: float, n_valid: int):
    src = write_lines(tmp_path / "data.jsonl", [example(i) for i in range(n)])
    report, train, valid = split(tmp_path, src, fraction=fraction)
    assert (report.valid, report.train) == (n_valid, n - n_valid)
    assert len(lines_of(valid)) == n_valid
    assert sorted(lines_of(train) + lines_of(valid)) == sorted(example(i) for i in range(n))


def test_deterministic_seeded_and_independent_of_line_order(tmp_path: Path):
    lines = [example(i) for i in range(50)]
    src = write_lines(tmp_path / "data.jsonl", lines)
    _, train_a, valid_a = split(tmp_path, src, fraction=0.2, seed=7, tag="a")
    _, train_b, valid_b = split(tmp_path, src, fraction=0.2, seed=7, tag="b")
    assert train_a.read_bytes() == train_b.read_bytes() and valid_a.read_bytes() == valid_b.read_bytes()
    _, _, valid_c = split(tmp_path, src, fraction=0.2, seed=8, tag="c")
    assert set(lines_of(valid_c)) != set(lines_of(valid_a))
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    src_shuffled = write_lines(tmp_path / "shuffled.jsonl", shuffled)
    _, train_d, valid_d = split(tmp_path, src_shuffled, fraction=0.2, seed=7, tag="d")
    assert set(lines_of(valid_d)) == set(lines_of(valid_a))
    # each output keeps the input's order
    assert lines_of(train_d) == [line for line in shuffled if line in set(lines_of(train_a))]


def test_dedupe_by_canonical_json_keeps_the_first(tmp_path: Path):
    lines = [
        '{"a": 1, "b": [1, 2]}',
        '{"b":[1,2],"a":1}',  # same object: different key order and spacing
        '{"a": 2}',
        '{"a": 1, "b": [2, 1]}',
        '{"a": 2}',
    ]
    src = write_lines(tmp_path / "data.jsonl", lines)
    report, train, valid = split(tmp_path, src, fraction=0.0, dedupe=True)
    assert (report.examples, report.duplicates, report.train, report.valid) == (5, 2, 3, 0)
    assert lines_of(train) == [lines[0], lines[2], lines[3]]
    assert valid.read_bytes() == b""
    report, train, _ = split(tmp_path, src, fraction=0.0, dedupe=False)
    assert report.duplicates == 0 and lines_of(train) == lines


def test_lines_are_copied_verbatim(tmp_path: Path):
    src = tmp_path / "data.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"x": "\xc3\xa9"}\r\n\n   \n{ "y" : 1 }')  # BOM, CRLF, blank lines, no final newline
    report, train, valid = split(tmp_path, src, fraction=0.0)
    assert (report.examples, report.train) == (2, 2)
    assert train.read_bytes() == b'{"x": "\xc3\xa9"}\r\n{ "y" : 1 }\n'


def test_invalid_lines_are_reported_and_nothing_is_written(tmp_path: Path):
    lines = [example(0), "{oops", "", "[1, 2]", '{"x": NaN}', example(1)]
    src = write_lines(tmp_path / "data.jsonl", lines)
    (tmp_path / "out.valid.jsonl").write_text("old\n")
    report, train, valid = split(tmp_path, src)
    assert not report.written and report.invalid_count == 3
    assert report.invalid == [
        LineIssue(2, "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
        LineIssue(4, "not a JSON object"),
        LineIssue(5, "not valid JSON: NaN is not valid JSON"),
    ]
    assert not train.exists() and valid.read_text() == "old\n"


def test_bad_utf8_is_an_invalid_line(tmp_path: Path):
    src = tmp_path / "data.jsonl"
    src.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    report, _, _ = split(tmp_path, src)
    assert report.invalid == [LineIssue(2, "not valid UTF-8")]


def test_errors(tmp_path: Path):
    src = write_lines(tmp_path / "data.jsonl", [example(0)])
    other = tmp_path / "other.jsonl"
    with pytest.raises(SplitError, match="no such file"):
        split_file(tmp_path / "missing.jsonl", other, tmp_path / "v.jsonl")
    with pytest.raises(SplitError, match="between 0 and 1"):
        split_file(src, other, tmp_path / "v.jsonl", valid_fraction=1.5)
    with pytest.raises(SplitError, match="would overwrite the input"):
        split_file(src, src, tmp_path / "v.jsonl")
    with pytest.raises(SplitError, match="must be different files"):
        split_file(src, other, other)
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(SplitError, match="no examples"):
        split_file(empty, other, tmp_path / "v.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "empty.jsonl"]


def test_default_paths():
    assert default_split_paths(Path("/d/set.chat.jsonl")) == (
        Path("/d/set.chat.train.jsonl"),
        Path("/d/set.chat.valid.jsonl"),
    )


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("convert")(data_tools.convert)
    app.command("split")(data_tools.split)
    return app


def test_cli_split_defaults(tmp_path: Path, cli: typer.Typer):
    src = write_lines(tmp_path / "data.jsonl", [example(i) for i in range(20)] + [example(0)])
    result = CliRunner().invoke(cli, ["split", str(src), "--dedupe", "--seed", "3"])
    assert result.exit_code == 0, result.output
    train, valid = tmp_path / "data.train.jsonl", tmp_path / "data.valid.jsonl"
    assert result.output.splitlines() == [
        "split 21 examples (seed 3, 1 duplicate dropped)",
        f"  train: 18 -> {train}",
        f"  valid: 2 -> {valid}",
    ]
    assert len(lines_of(train)) == 18 and len(lines_of(valid)) == 2


def test_cli_split_named_outputs_and_empty_side_note(tmp_path: Path, cli: typer.Typer):
    src = write_lines(tmp_path / "data.jsonl", [example(i) for i in range(3)])
    train, valid = tmp_path / "t" / "train.jsonl", tmp_path / "v" / "valid.jsonl"
    args = ["split", str(src), "--valid-fraction", "0.1", "--train-out", str(train), "--valid-out", str(valid)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "note: the validation file is empty"
    assert len(lines_of(train)) == 3 and valid.read_bytes() == b""


def test_cli_split_invalid_lines_exit_1(tmp_path: Path, cli: typer.Typer):
    src = write_lines(tmp_path / "data.jsonl", [example(0)] + ["nope"] * 12)
    result = CliRunner().invoke(cli, ["split", str(src)])
    assert isinstance(result.exception, InvalidLinesError) and result.exception.exit_code == 1
    out = result.output.splitlines()
    assert out[0] == f"{src}: 12 invalid lines:"
    assert out[1:11] == [f"  line {n}: not valid JSON: Expecting value (column 1)" for n in range(2, 12)]
    assert out[11:] == ["  ... and 2 more"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]
