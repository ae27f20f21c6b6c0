"""The data validator's report for people: issues by code (the first lines of each), token table, estimate."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from tuneloop.data.validate import Distribution, ValidationReport

#: How many lines of each issue code are shown before "... and N more".
FIRST_PER_CODE = 3


def _dist_row(name: str, d: Distribution | None) -> list[str]:
    if d is None:
        return [name] + ["-"] * 6
    return [name, *(f"{v:g}" for v in (d.min, d.max, d.mean, d.median, d.p5, d.p95))]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_validation(report: ValidationReport, model: str, console: Console | None = None) -> None:
    """Print ``report`` (token counts by ``model``'s tokenizer) to ``console`` (default: stdout)."""
    console = console or Console()
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
