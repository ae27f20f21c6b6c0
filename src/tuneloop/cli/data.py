"""``tuneloop data``: validate training files (convert and split live in data_tools)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneloop.cli import data_tools
from tuneloop.config import get_settings
from tuneloop.data.report import print_validation
from tuneloop.errors import TuneloopError
from tuneloop.jobs.validation import file_validator
from tuneloop.models import Catalog

app = typer.Typer(help="Prepare training data: validate, convert, split.", no_args_is_help=True)
app.command("convert")(data_tools.convert)
app.command("split")(data_tools.split)


class _CannotRun(TuneloopError):
    exit_code = 2


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="JSONL training file (chat, preference or prompt/completion format)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Model whose tokenizer and template count."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Truncation limit (default: model context)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the report."),
) -> None:
    """Check a training file: errors by line, token statistics, epochs and cost estimate.

    Exit code 0 without errors, 1 with errors, 2 when the check cannot run.
    """
    if not file.is_file():
        raise _CannotRun(f"{file}: {'not a file' if file.exists() else 'no such file'}")
    report = file_validator(Catalog(get_settings()), model, max_tokens)(file)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_validation(report, model)
    raise typer.Exit(0 if report.ok else 1)
