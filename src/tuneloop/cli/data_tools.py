"""``tuneloop data convert`` and ``tuneloop data split``: thin wrappers over ``tuneloop.data``."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop.data.convert import (
    SOURCE_FORMATS,
    ConvertOptions,
    LineIssue,
    NothingConvertedError,
    convert_file,
    default_output_path,
)
from tuneloop.data.split import InvalidLinesError, default_split_paths, split_file

#: How many skipped / invalid lines the summary lists before "... and N more".
SHOWN_ISSUES = 10


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _echo_issues(issues: list[LineIssue], total: int, unit: str) -> None:
    for issue in issues[:SHOWN_ISSUES]:
        typer.echo(f"  {unit} {issue.line}: {issue.reason}")
    if total > SHOWN_ISSUES:
        typer.echo(f"  ... and {total - SHOWN_ISSUES} more")


def convert(
    input: Path = typer.Argument(
        ..., help="Alpaca, ShareGPT or prompt/completion JSONL (or a JSON array), or a CSV/TSV file."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Chat JSONL to write. (default: <stem>.chat.jsonl next to the input)"
    ),
    source_format: str | None = typer.Option(
        None, "--from", help=f"Input format: {'|'.join(SOURCE_FORMATS)}. (default: detected)"
    ),
    system: str | None = typer.Option(None, "--system", "-s", help="System prompt for examples without their own."),
    user_column: str | None = typer.Option(
        None,
        "--user-column",
        help="CSV column with the user message. (default: user/prompt/question/input/instruction)",
    ),
    assistant_column: str | None = typer.Option(
        None,
        "--assistant-column",
        help="CSV column with the assistant reply. (default: assistant/completion/answer/response/output)",
    ),
    system_column: str | None = typer.Option(None, "--system-column", help="CSV column with a per-row system prompt."),
    delimiter: str | None = typer.Option(
        None, "--delimiter", help="CSV delimiter ('tab' for tabs). (default: tab for .tsv, else comma)"
    ),
) -> None:
    """Convert Alpaca, ShareGPT, prompt/completion or CSV data into OpenAI chat JSONL."""
    dest = output if output is not None else default_output_path(input)
    options = ConvertOptions(system, user_column, assistant_column, system_column, delimiter)
    report = convert_file(input, dest, source_format, options)
    if report.written:
        typer.echo(f"converted {_plural(report.written, 'example')} ({report.source_format}) to {dest}")
    if report.skipped_count:
        typer.echo(f"skipped {_plural(report.skipped_count, report.unit)} of {report.read}:")
        _echo_issues(report.skipped, report.skipped_count, report.unit)
    if not report.written:
        raise NothingConvertedError(f"nothing in {input} could be converted; {dest} was not written")


def split(
    input: Path = typer.Argument(..., help="JSONL file to split (one JSON object per line)."),
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", help="Share of examples for validation (0-1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the hash that picks the validation examples."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Drop exact duplicate examples (same JSON object) first."),
    train_out: Path | None = typer.Option(
        None, "--train-out", help="Training file to write. (default: <stem>.train.jsonl next to the input)"
    ),
    valid_out: Path | None = typer.Option(
        None, "--valid-out", help="Validation file to write. (default: <stem>.valid.jsonl next to the input)"
    ),
) -> None:
    """Split a JSONL file into train and validation files, deterministically."""
    default_train, default_valid = default_split_paths(input)
    train_path = train_out if train_out is not None else default_train
    valid_path = valid_out if valid_out is not None else default_valid
    report = split_file(input, train_path, valid_path, valid_fraction, seed, dedupe)
    if not report.written:
        typer.echo(f"{input}: {_plural(report.invalid_count, 'invalid line')}:")
        _echo_issues(report.invalid, report.invalid_count, "line")
        raise InvalidLinesError(f"{input} has invalid lines; nothing was written")
    dropped = f", {_plural(report.duplicates, 'duplicate')} dropped" if dedupe else ""
    typer.echo(f"split {_plural(report.examples, 'example')} (seed {seed}{dropped})")
    typer.echo(f"  train: {report.train} -> {train_path}")
    typer.echo(f"  valid: {report.valid} -> {valid_path}")
    if report.valid == 0 or report.train == 0:
        typer.echo(f"note: the {'validation' if report.valid == 0 else 'training'} file is empty")
