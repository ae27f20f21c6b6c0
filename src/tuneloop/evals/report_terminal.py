"""The evaluation report as terminal tables (rich): figures with ratios, confusions, disagreements."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneloop.evals.report import (
    COST_SPEED,
    LABELS,
    METRIC_LABELS,
    EvalReport,
    clip,
    fmt,
    quality_metrics,
    shots_label,
)


def _with_ratio(value: float | None, r: float | None, is_baseline: bool) -> str:
    text = fmt(value)
    if is_baseline or r is None:
        return text
    return f"{text} (×{r:.2f})"


def print_report(report: EvalReport, console: Console | None = None, examples: bool = True) -> None:
    """The comparison table (ratios against the baseline in brackets), confusions, disagreements and notes."""
    console = console or Console()
    quality = quality_metrics(report)
    table = Table(
        title=f"{report.data}: {report.n_examples} examples, graded by {', '.join(report.graders)}; "
        f"ratios (×) against [bold]{escape(report.baseline)}[/]",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("candidate", overflow="fold")
    table.add_column("shots", justify="right")
    for k in quality:
        table.add_column(METRIC_LABELS.get(k, k), justify="right")
    for k in COST_SPEED:
        table.add_column(LABELS[k], justify="right")
    table.add_column("errors", justify="right")
    for s in report.candidates:
        is_base = s.name == report.baseline
        row = [f"[bold]{escape(s.name)}[/]" if is_base else escape(s.name), shots_label(s)]
        for k in quality:
            row.append(_with_ratio(s.metrics.get(k), s.ratios.get(k) if k == report.primary_metric else None, is_base))
        row += [_with_ratio(getattr(s, k), s.ratios.get(k), is_base) for k in COST_SPEED]
        row.append(str(s.errors))
        table.add_row(*row)
    console.print(table)
    for s in report.candidates:
        confusions = s.details.get("top_confusions")
        if confusions:
            text = ", ".join(f"{c['reference']} → {c['predicted']} ×{c['count']}" for c in confusions)
            console.print(f"[dim]{escape(s.name)}[/] most confused: {escape(text)}", highlight=False)
        if s.judge:
            j = s.judge
            console.print(
                f"[dim]{escape(s.name)}[/] vs {escape(report.baseline)} (judge): "
                f"{j['wins']} wins, {j['losses']} losses, {j['ties']} ties"
                + (f" ({j['unparsed']} unreadable verdicts)" if j["unparsed"] else ""),
                highlight=False,
            )
    if examples and report.disagreements:
        dis = Table(title="Examples where candidates disagree", box=box.SIMPLE_HEAD, title_justify="left")
        dis.add_column("#", justify="right")
        dis.add_column("question", overflow="fold", max_width=40)
        dis.add_column("reference", overflow="fold", max_width=30)
        for s in report.candidates:
            dis.add_column(s.name, overflow="fold", max_width=30)
        for item in report.disagreements:
            cells = [str(item["line"]), clip(item["question"], 160), clip(item["reference"], 120)]
            for s in report.candidates:
                out = item["outputs"][s.name]
                mark = "✓" if out["score"] >= 1 else "✗" if out["score"] <= 0 else f"{out['score']:.2f}"
                cells.append(f"{mark} {clip(out['output'], 120)}")
            dis.add_row(*cells)
        console.print(dis, markup=False)
    for note in report.notes:
        console.print(note, markup=False, highlight=False)
