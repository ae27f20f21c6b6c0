"""The evaluation report: quality, cost and speed per candidate, side by side, against a baseline.

``build_report`` turns an :class:`~tuneloop.evals.runner.EvalRun` into an :class:`EvalReport`;
it is written as JSON (``to_json``), printed as a terminal table (``print_report``) and written as
a self-contained HTML page with inline SVG charts (``write_html``: no scripts, no external files).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import html
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.evals.graders import judge_summary, normalize_text

if TYPE_CHECKING:
    from rich.console import Console

    from tuneloop.evals.runner import CandidateRun, EvalRun

#: The measures compared against the baseline, after the primary quality metric.
COST_SPEED = ("mean_prompt_tokens", "mean_completion_tokens", "mean_latency_s", "tokens_per_second")
LABELS = {
    "mean_prompt_tokens": "prompt tokens",
    "mean_completion_tokens": "completion tokens",
    "mean_latency_s": "latency (s)",
    "tokens_per_second": "tokens/s",
}
DEFAULT_DISAGREEMENTS = 5
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e")


@dataclass
class CandidateSummary:
    """One candidate's figures."""

    name: str
    model: str
    base_url: str
    few_shot: int | str | None
    mean_shots: float
    #: Every quality metric of the graders (and ``judge_score`` when judged).
    metrics: dict[str, float]
    primary: float
    mean_prompt_tokens: float | None
    mean_completion_tokens: float | None
    mean_latency_s: float | None
    tokens_per_second: float | None
    errors: int
    #: This candidate's figure divided by the baseline's, per measure (None where undefined).
    ratios: dict[str, float | None] = field(default_factory=dict)
    #: Grader extras (per-label figures, confusion counts).
    details: dict[str, Any] = field(default_factory=dict)
    #: Wins/losses/ties against the baseline when a judge ran.
    judge: dict[str, Any] | None = None


@dataclass
class EvalReport:
    """Everything the terminal table, the JSON file and the HTML page show."""

    created: int
    data: str
    n_examples: int
    task: str
    graders: list[str]
    primary_metric: str
    baseline: str
    candidates: list[CandidateSummary]
    disagreements: list[dict[str, Any]]
    items: list[dict[str, Any]]
    config: dict[str, Any]
    elapsed_s: float

    def candidate(self, name: str) -> CandidateSummary:
        """The summary of the candidate called ``name``."""
        return next(c for c in self.candidates if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities become null)."""
        return _finite({"object": "tuneloop.eval_report", **asdict(self)})

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, None when either is missing or the base is 0."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def _summarise(run: CandidateRun, primary_metric: str, default_base_url: str) -> CandidateSummary:
    ok = [r for r in run.results if r.error is None]
    prompt = [float(r.prompt_tokens) for r in ok if r.prompt_tokens is not None]
    completion = [float(r.completion_tokens) for r in ok if r.completion_tokens is not None]
    timed = [r for r in ok if r.completion_tokens is not None and r.latency_s > 0]
    total_time = sum(r.latency_s for r in timed)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for grade in run.grades:
        metrics.update(grade.metrics)
        details.update({k: v for k, v in grade.details.items() if k != "predictions"})
    judge = None
    if run.verdicts is not None:
        judge_metrics, _ = judge_summary(run.verdicts)
        metrics["judge_score"] = judge_metrics["judge_score"]
        judge = {k.removeprefix("judge_"): int(v) for k, v in judge_metrics.items() if k != "judge_score"}
    c = run.candidate
    return CandidateSummary(
        name=c.name,
        model=c.model,
        base_url=c.base_url or default_base_url,
        few_shot=c.few_shot,
        mean_shots=sum(r.shots for r in run.results) / len(run.results) if run.results else 0.0,
        metrics=metrics,
        primary=metrics.get(primary_metric, 0.0),
        mean_prompt_tokens=_mean_or_none(prompt),
        mean_completion_tokens=_mean_or_none(completion),
        mean_latency_s=_mean_or_none([r.latency_s for r in ok]),
        tokens_per_second=sum(r.completion_tokens or 0 for r in timed) / total_time if total_time > 0 else None,
        errors=len(run.results) - len(ok),
        details=details,
        judge=judge,
    )


def _example_scores(run: CandidateRun) -> list[float]:
    if run.grades:
        return run.grades[0].scores
    if run.verdicts is not None:
        return judge_summary(run.verdicts)[1]
    return [0.0] * len(run.results)


def _last_user(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def find_disagreements(items: list[dict[str, Any]], limit: int = DEFAULT_DISAGREEMENTS) -> list[dict[str, Any]]:
    """Items where candidates' scores differ (widest spread first), then where only their outputs differ."""
    ranked = []
    for item in items:
        scores = [o["score"] for o in item["outputs"].values()]
        texts = {normalize_text(o["output"]) for o in item["outputs"].values()}
        spread = max(scores) - min(scores) if scores else 0.0
        if spread > 0 or len(texts) > 1:
            ranked.append((-spread, item["index"], item))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [item for _, _, item in ranked[:limit]]


def build_report(run: EvalRun, disagreements: int = DEFAULT_DISAGREEMENTS) -> EvalReport:
    """Summarise a run: per-candidate figures, ratios against the baseline, disagreement examples."""
    config = run.config
    first = run.runs[0]
    primary_metric = first.grades[0].primary if first.grades else "judge_score"
    summaries = [_summarise(r, primary_metric, config.base_url) for r in run.runs]
    base = next(s for s in summaries if s.name == run.baseline)
    for s in summaries:
        s.ratios = {primary_metric: ratio(s.primary, base.primary)}
        s.ratios.update({k: ratio(getattr(s, k), getattr(base, k)) for k in COST_SPEED})
    scores = {r.candidate.name: _example_scores(r) for r in run.runs}
    items = []
    for item in run.items:
        outputs = {}
        for r in run.runs:
            res = r.results[item.index]
            outputs[r.candidate.name] = {
                "output": res.output,
                "score": scores[r.candidate.name][item.index],
                "latency_s": res.latency_s,
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
                "shots": res.shots,
                "error": res.error,
            }
        question = _last_user(item.prompt)
        items.append(
            {"index": item.index, "line": item.line, "question": question, "reference": item.reference}
            | {"outputs": outputs}
        )
    settings = {
        "grader": config.grader,
        "max_tokens": config.max_tokens,
        "concurrency": config.concurrency,
        "seed": config.seed,
        "fewshot_budget": config.fewshot_budget,
        "train": str(config.train) if config.train else None,
        "limit": config.limit,
        "judge": config.judge.model if config.judge else None,
    }
    return EvalReport(
        created=int(run.started_at),
        data=str(config.data),
        n_examples=len(run.items),
        task=run.task,
        graders=[g.grader for g in first.grades] + (["judge"] if first.verdicts is not None else []),
        primary_metric=primary_metric,
        baseline=run.baseline,
        candidates=summaries,
        disagreements=find_disagreements(items, disagreements),
        items=items,
        config=settings,
        elapsed_s=run.elapsed_s,
    )


# --------------------------------------------------------------------------- loss curves


def parse_metrics_csv(text: str, label: str) -> dict[str, Any]:
    """A loss curve from a training metrics CSV (``step,train_loss,valid_loss,...``; base64 accepted).

    Returns ``{"label", "step", "train_loss", "valid_loss"}`` with None for empty cells.
    """
    if not text.lstrip().startswith("step"):
        with contextlib.suppress(binascii.Error, UnicodeDecodeError, ValueError):  # OpenAI's are base64
            text = base64.b64decode(text, validate=True).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "step" not in reader.fieldnames or "train_loss" not in reader.fieldnames:
        raise ValueError(f"{label}: not a metrics CSV (needs step and train_loss columns)")

    def number(value: str | None) -> float | None:
        try:
            x = float(value) if value not in (None, "") else None
        except ValueError:
            return None
        return x if x is not None and math.isfinite(x) else None

    curve: dict[str, Any] = {"label": label, "step": [], "train_loss": [], "valid_loss": []}
    for row in reader:
        step = number(row.get("step"))
        if step is None:
            continue
        curve["step"].append(step)
        curve["train_loss"].append(number(row.get("train_loss")))
        curve["valid_loss"].append(number(row.get("valid_loss")))
    return curve


def read_metrics_csv(path: Path, label: str | None = None) -> dict[str, Any]:
    """:func:`parse_metrics_csv` of a file; the label defaults to the file's parent folder and name."""
    return parse_metrics_csv(path.read_text(encoding="utf-8"), label or f"{path.parent.name}/{path.name}")


# --------------------------------------------------------------------------- terminal


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.3g}"


def _with_ratio(value: float | None, r: float | None, is_baseline: bool) -> str:
    text = _fmt(value)
    if is_baseline or r is None:
        return text
    return f"{text} (×{r:.2f})"


def _shots_label(s: CandidateSummary) -> str:
    if not s.few_shot:
        return "0"
    return f"{s.mean_shots:.3g}" if s.few_shot == "auto" else str(s.few_shot)


def print_report(report: EvalReport, console: Console | None = None, examples: bool = True) -> None:
    """The comparison table (ratios against the baseline in brackets), confusions and disagreements."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    quality = [report.primary_metric] + [
        k for k in report.candidates[0].metrics if k != report.primary_metric and k != "no_label_rate"
    ]
    table = Table(
        title=f"{report.data}: {report.n_examples} examples, graded by {', '.join(report.graders)}; "
        f"ratios (×) against [bold]{escape(report.baseline)}[/]",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("candidate", overflow="fold")
    table.add_column("shots", justify="right")
    for k in quality:
        table.add_column(k, justify="right")
    for k in COST_SPEED:
        table.add_column(LABELS[k], justify="right")
    table.add_column("errors", justify="right")
    for s in report.candidates:
        is_base = s.name == report.baseline
        row = [f"[bold]{escape(s.name)}[/]" if is_base else escape(s.name), _shots_label(s)]
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
            cells = [str(item["line"]), _clip(item["question"], 160), _clip(item["reference"], 120)]
            for s in report.candidates:
                out = item["outputs"][s.name]
                mark = "✓" if out["score"] >= 1 else "✗" if out["score"] <= 0 else f"{out['score']:.2f}"
                cells.append(f"{mark} {_clip(out['output'], 120)}")
            dis.add_row(*cells)
        console.print(dis, markup=False)


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d1d1f;
padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9rem}table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e5e5e5;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.text,table.disagreements th{text-align:left}
td.text{max-width:26rem;white-space:pre-wrap;overflow-wrap:anywhere}td.name{min-width:12rem;overflow-wrap:anywhere}
.scroll{overflow-x:auto}.model{color:#777;font-size:.8em;font-weight:400}
tr.baseline td{font-weight:600}.ratio{color:#777;font-size:.8em}.good{color:#1a7f37}.bad{color:#b42318}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.chart{border:1px solid #eee;border-radius:6px;padding:.4rem}
svg text{font-family:inherit}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def svg_bar_chart(title: str, bars: list[tuple[str, float | None, str]], width: int = 520) -> str:
    """A horizontal bar chart as inline SVG: (label, value, colour) per bar; missing values show '-'."""
    row, top, left, right = 26, 30, 190, 60
    height = top + row * len(bars) + 10
    values = [v for _, v, _ in bars if v is not None and math.isfinite(v)]
    hi = max(values + [0.0]) or 1.0
    scale = (width - left - right) / hi
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bar-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="8" y="18" font-size="13" font-weight="600">{_esc(title)}</text>',
    ]
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * row
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" font-size="11" text-anchor="end"><title>{_esc(label)}</title>'
            f"{_esc(short)}</text>"
        )
        w = max(0.0, (value or 0.0) * scale) if value is not None and math.isfinite(value) else 0.0
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{colour}" rx="2"/>')
        parts.append(f'<text x="{left + w + 5:.1f}" y="{y + 15}" font-size="11" fill="#444">{_esc(_fmt(value))}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - 8}" stroke="#999"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_line_chart(title: str, series: list[tuple[str, list[float], list[float | None], str, bool]]) -> str:
    """A line chart as inline SVG: (label, x values, y values or None, colour, dashed) per series."""
    width, height, left, right, top, bottom = 640, 300, 55, 150, 28, 38
    points = [(x, y) for _, xs, ys, _, _ in series for x, y in zip(xs, ys, strict=True) if y is not None]
    xs_all = [p[0] for p in points] or [0.0, 1.0]
    ys_all = [p[1] for p in points] or [0.0, 1.0]
    x_ticks = _ticks(min(xs_all), max(xs_all))
    y_ticks = _ticks(min(0.0, min(ys_all)), max(ys_all))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="line-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="8" y="18" font-size="13" font-weight="600">{_esc(title)}</text>',
    ]
    for t in y_ticks:
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    for t in x_ticks:
        parts.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">step</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i, (label, xs, ys, colour, dashed) in enumerate(series):
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True) if y is not None]
        if not pts:
            continue
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        if len(pts) <= 40:
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{colour}"/>' for x, y in pts]
        ly = top + 10 + i * 16
        parts.append(
            f'<line x1="{left + pw + 10}" y1="{ly}" x2="{left + pw + 30}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{left + pw + 34}" y="{ly + 4}" font-size="10">{_esc(label[:22])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _loss_chart(curve: dict[str, Any], colour_train: str, colour_valid: str) -> str:
    series = [("train loss", curve["step"], curve["train_loss"], colour_train, False)]
    if any(v is not None for v in curve.get("valid_loss") or []):
        series.append(("validation loss", curve["step"], curve["valid_loss"], colour_valid, True))
    return svg_line_chart(f"Loss: {curve['label']}", series)


def _ratio_html(r: float | None, higher_is_better: bool) -> str:
    if r is None:
        return ""
    better = None if round(r, 2) == 1 else (r > 1) == higher_is_better
    cls = "" if better is None else " good" if better else " bad"
    return f' <span class="ratio{cls}">×{r:.2f}</span>'


def _summary_table(report: EvalReport) -> str:
    quality = [report.primary_metric] + [k for k in report.candidates[0].metrics if k != report.primary_metric]
    head = ["candidate", "shots", *quality, *(LABELS[k] for k in COST_SPEED), "errors"]
    rows = ["<div class='scroll'><table class='summary'><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for s in report.candidates:
        is_base = s.name == report.baseline
        name = f"{_esc(s.name)}{' (baseline)' if is_base else ''}<br><span class='model'>{_esc(s.model)}</span>"
        cells = [f"<td class='name'>{name}</td>", f"<td>{_esc(_shots_label(s))}</td>"]
        for k in quality:
            r = s.ratios.get(k) if k == report.primary_metric and not is_base else None
            higher = k != "no_label_rate"
            cells.append(f"<td>{_esc(_fmt(s.metrics.get(k)))}{_ratio_html(r, higher)}</td>")
        for k in COST_SPEED:
            r = None if is_base else s.ratios.get(k)
            cells.append(f"<td>{_esc(_fmt(getattr(s, k)))}{_ratio_html(r, k == 'tokens_per_second')}</td>")
        cells.append(f"<td>{s.errors}</td>")
        rows.append(f"<tr class='{'baseline' if is_base else ''}'>" + "".join(cells) + "</tr>")
    rows.append("</table></div>")
    return "".join(rows)


def _confusion_html(s: CandidateSummary) -> str:
    confusion: dict[str, dict[str, int]] = s.details.get("confusion") or {}
    labels: list[str] = s.details.get("labels") or sorted(confusion)
    if not confusion:
        return ""
    predicted = list(labels) + sorted({p for row in confusion.values() for p in row} - set(labels))
    peak = max((c for row in confusion.values() for c in row.values()), default=1)
    out = [
        f"<h3>{_esc(s.name)}</h3><div class='scroll'><table class='confusion'><tr><th>reference ↓ / predicted →</th>"
    ]
    out += [f"<th>{_esc(p)}</th>" for p in predicted]
    out.append("</tr>")
    for ref in labels:
        row = confusion.get(ref, {})
        out.append(f"<tr><td>{_esc(ref)}</td>")
        for p in predicted:
            n = row.get(p, 0)
            alpha = 0.85 * n / peak if n else 0
            hue = "66,105,208" if p == ref else "255,114,92"
            out.append(f"<td style='background:rgba({hue},{alpha:.2f})'>{n or ''}</td>")
        out.append("</tr>")
    out.append("</table></div>")
    return "".join(out)


def _disagreements_html(report: EvalReport) -> str:
    if not report.disagreements:
        return "<p>The candidates agree on every example.</p>"
    head = ["line", "question", "reference", *(s.name for s in report.candidates)]
    out = ["<table class='disagreements'><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for item in report.disagreements:
        cells = [f"<td>{item['line']}</td>", f"<td class='text'>{_esc(_clip(item['question'], 400))}</td>"]
        cells.append(f"<td class='text'>{_esc(_clip(item['reference'], 300))}</td>")
        for s in report.candidates:
            out_ = item["outputs"][s.name]
            cls = "good" if out_["score"] >= 1 else "bad" if out_["score"] <= 0 else ""
            cells.append(
                f"<td class='text {cls}'>{_esc(_clip(out_['output'], 300))}<br>"
                f"<span class='ratio'>score {out_['score']:.2f}</span></td>"
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def render_html(report: EvalReport, loss_curves: list[dict[str, Any]] | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    colours = {s.name: PALETTE[i % len(PALETTE)] for i, s in enumerate(report.candidates)}
    charts = []
    measures: list[tuple[str, str]] = [(report.primary_metric, report.primary_metric)]
    measures += [(k, LABELS[k]) for k in COST_SPEED]
    for key, title in measures:
        bars = []
        for s in report.candidates:
            value = s.primary if key == report.primary_metric else getattr(s, key)
            bars.append((s.name, value, colours[s.name]))
        charts.append(f"<div class='chart'>{svg_bar_chart(title, bars)}</div>")
    loss_html = ""
    if loss_curves:
        loss_html = (
            "<h2>Training</h2><div class='charts'>"
            + "".join(f"<div class='chart'>{_loss_chart(c, PALETTE[0], PALETTE[2])}</div>" for c in loss_curves)
            + "</div>"
        )
    confusions = "".join(_confusion_html(s) for s in report.candidates)
    judge_rows = [s for s in report.candidates if s.judge and s.name != report.baseline]
    judge_html = ""
    if judge_rows:
        judge_html = "<h2>Pairwise judge</h2><table><tr><th>candidate</th><th>wins</th><th>losses</th><th>ties</th>"
        judge_html += (
            "<th>score</th></tr>"
            + "".join(
                f"<tr><td>{_esc(s.name)} vs {_esc(report.baseline)}</td><td>{s.judge['wins']}</td>"
                f"<td>{s.judge['losses']}</td><td>{s.judge['ties']}</td><td>{_fmt(s.metrics.get('judge_score'))}</td></tr>"
                for s in judge_rows
                if s.judge
            )
            + "</table>"
        )
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.created))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>tuneloop eval: {_esc(Path(report.data).name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Evaluation: {_esc(Path(report.data).name)}</h1>"
        f"<p class='meta'>{report.n_examples} examples · task {_esc(report.task)} · graders "
        f"{_esc(', '.join(report.graders))} · ratios against <b>{_esc(report.baseline)}</b> · {created} · "
        f"{report.elapsed_s:.1f} s</p>"
        f"<h2>Comparison</h2>{_summary_table(report)}<div class='charts'>{''.join(charts)}</div>"
        f"{judge_html}"
        f"{'<h2>Confusion</h2>' + confusions if confusions else ''}"
        f"{loss_html}"
        f"<h2>Where candidates disagree</h2><div class='scroll'>{_disagreements_html(report)}</div>"
        "</body></html>"
    )


def write_html(path: Path, report: EvalReport, loss_curves: list[dict[str, Any]] | None = None) -> Path:
    """Write :func:`render_html` to ``path`` (parent folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, loss_curves), encoding="utf-8")
    return path


def write_json(path: Path, report: EvalReport) -> Path:
    """Write the report's JSON to ``path`` (parent folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json() + "\n", encoding="utf-8")
    return path
