"""``tuneloop data``: validate training files (convert and split live in data_tools)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli import data_tools
from tuneloop.config import get_settings
from tuneloop.data.validate import Distribution, ValidationReport
from tuneloop.errors import TuneloopError

app = typer.Typer(help="Prepare training data: validate, convert, split.", no_args_is_help=True)
app.command("convert")(data_tools.convert)
app.command("split")(data_tools.split)
FIRST_PER_CODE = 3


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
    from tuneloop.data.render import ChatRenderer
    from tuneloop.data.validate import validate_file
    from tuneloop.models import Catalog, load_tokenizer

    if not file.is_file():
        raise _CannotRun(f"{file}: {'not a file' if file.exists() else 'no such file'}")
    catalog = Catalog(get_settings())
    entry = catalog.ensure_ready(catalog.get(model))
    limit = min(max_tokens, entry.context_length) if max_tokens else entry.context_length
    report = validate_file(file, ChatRenderer(load_tokenizer(entry)), limit, entry.parameter_count)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, model)
    raise typer.Exit(0 if report.ok else 1)


def _dist_row(name: str, d: Distribution | None) -> list[str]:
    if d is None:
        return [name] + ["-"] * 6
    return [name, *(f"{v:g}" for v in (d.min, d.max, d.mean, d.median, d.p5, d.p95))]


def print_report(report: ValidationReport, model: str) -> None:
    """The human-readable report: issues by code (first lines of each), token table, estimate."""
    console = Console()
    console.print(f"[bold]{report.path}[/]: {report.n_examples} examples, format {report.format or 'unknown'}")
    for title, issues, counts, style in (
        ("errors", report.errors, report.error_counts, "red"),
        ("warnings", report.warnings, report.warning_counts, "yellow"),
    ):
        if not counts:
            continue
        console.print(f"[{style}]{sum(counts.values())} {title}[/]")
        for code, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            console.print(f"  [{style}]{code}[/] ({count})")
            shown = [i for i in issues if i.code == code][:FIRST_PER_CODE]
            for issue in shown:
                where = f"line {issue.line}" if issue.line else "file"
                console.print(f"    {where}: {issue.message}", markup=False, highlight=False)
            if count > len(shown):
                console.print(f"    ... and {count - len(shown)} more")
    if report.stats is not None:
        s = report.stats
        table = Table("per example", "min", "max", "mean", "median", "p5", "p95", title=f"Tokens ({model})")
        table.add_row(*_dist_row("total tokens", s.total_tokens))
        table.add_row(*_dist_row("trained tokens", s.trained_tokens))
        table.add_row(*_dist_row("messages", s.messages_per_example))
        console.print(table)
        console.print(f"{s.n_truncated} example(s) longer than {s.limit} tokens will be truncated")
    if report.estimate is not None:
        e = report.estimate
        eta = f", about {_duration(e.seconds)} on this machine" if e.seconds else ""
        console.print(f"Training with auto epochs: {e.n_epochs} epochs ({e.epochs_rule})")
        console.print(f"  ~{e.trained_tokens:,} tokens trained{eta}")
    verdict = (
        "[green]No errors found[/]" if report.ok else f"[red]{report.n_errors} error(s): fix them before training[/]"
    )
    console.print(verdict)
    sys.stdout.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
