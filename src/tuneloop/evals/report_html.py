"""The evaluation report as one self-contained HTML page: inline CSS and SVG charts, no scripts.

The page is the Jinja2 template ``templates/report.html.j2`` (autoescaped); this module lays out
what it shows: table cells with their ratio colours, chart geometry, confusion shading.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from tuneloop.evals.report import (
    COST_SPEED,
    LABELS,
    LOWER_IS_BETTER,
    METRIC_LABELS,
    CandidateSummary,
    EvalReport,
    clip,
    fmt,
    quality_metrics,
    shots_label,
)

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e")

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tuneloop.evals", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters.update(fmt=fmt, clip=clip)


# --------------------------------------------------------------------------- charts


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


def bar_chart(title: str, bars: list[tuple[str, float | None, str]], width: int = 520) -> dict[str, Any]:
    """The layout of a horizontal bar chart: (label, value, colour) per bar; missing values show '-'."""
    row, top, left, right = 26, 30, 190, 60
    height = top + row * len(bars) + 10
    values = [v for _, v, _ in bars if v is not None and math.isfinite(v)]
    hi = max(values + [0.0]) or 1.0
    scale = (width - left - right) / hi
    laid_out = []
    for i, (label, value, colour) in enumerate(bars):
        finite = value is not None and math.isfinite(value)
        laid_out.append(
            {
                "label": label,
                "short": label if len(label) <= 28 else label[:27] + "…",
                "y": top + i * row,
                "w": max(0.0, (value or 0.0) * scale) if finite else 0.0,
                "value": value,
                "colour": colour,
            }
        )
    return {"title": title, "width": width, "height": height, "row": row, "top": top, "left": left, "bars": laid_out}


def line_chart(title: str, series: list[tuple[str, list[float], list[float | None], str, bool]]) -> dict[str, Any]:
    """The layout of a line chart: (label, x values, y values or None, colour, dashed) per series."""
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

    lines = []
    for i, (label, xs, ys, colour, dashed) in enumerate(series):
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True) if y is not None]
        if pts:
            lines.append(
                {"label": label, "points": pts, "colour": colour, "dashed": dashed, "dots": len(pts) <= 40}
                | {"legend_y": top + 10 + i * 16}
            )
    return {
        "title": title,
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "pw": pw,
        "ph": ph,
        "x_ticks": [(t, sx(t)) for t in x_ticks],
        "y_ticks": [(t, sy(t)) for t in y_ticks],
        "series": lines,
    }


def _loss_chart(curve: dict[str, Any], colour_train: str, colour_valid: str) -> dict[str, Any]:
    series = [("train loss", curve["step"], curve["train_loss"], colour_train, False)]
    if any(v is not None for v in curve.get("valid_loss") or []):
        series.append(("validation loss", curve["step"], curve["valid_loss"], colour_valid, True))
    return line_chart(f"Loss: {curve['label']}", series)


# --------------------------------------------------------------------------- tables


@dataclass
class _Cell:
    """A figure, and its ratio against the baseline coloured good or bad (``tone``)."""

    value: float | None
    ratio: float | None = None
    tone: str = ""


def _cell(value: float | None, r: float | None, higher_is_better: bool) -> _Cell:
    if r is None:
        return _Cell(value)
    better = None if round(r, 2) == 1 else (r > 1) == higher_is_better
    return _Cell(value, r, "" if better is None else "good" if better else "bad")


def _summary_rows(report: EvalReport, quality: list[str]) -> list[dict[str, Any]]:
    rows = []
    for s in report.candidates:
        is_base = s.name == report.baseline
        cells = []
        for k in quality:
            r = s.ratios.get(k) if k == report.primary_metric and not is_base else None
            cells.append(_cell(s.metrics.get(k), r, k not in LOWER_IS_BETTER))
        for k in COST_SPEED:
            cells.append(_cell(getattr(s, k), None if is_base else s.ratios.get(k), k == "tokens_per_second"))
        rows.append({"s": s, "is_base": is_base, "shots": shots_label(s), "cells": cells})
    return rows


def _confusion(s: CandidateSummary) -> dict[str, Any] | None:
    """A candidate's confusion matrix with each cell's count and background (blue right, red wrong)."""
    confusion: dict[str, dict[str, int]] = s.details.get("confusion") or {}
    labels: list[str] = s.details.get("labels") or sorted(confusion)
    if not confusion:
        return None
    predicted = list(labels) + sorted({p for row in confusion.values() for p in row} - set(labels))
    peak = max((c for row in confusion.values() for c in row.values()), default=1)
    rows = []
    for ref in labels:
        counts = confusion.get(ref, {})
        cells = []
        for p in predicted:
            n = counts.get(p, 0)
            hue = "66,105,208" if p == ref else "255,114,92"
            cells.append({"n": n, "background": f"rgba({hue},{0.85 * n / peak if n else 0:.2f})"})
        rows.append({"reference": ref, "cells": cells})
    return {"name": s.name, "predicted": predicted, "rows": rows}


# --------------------------------------------------------------------------- the page


def render_html(report: EvalReport, loss_curves: list[dict[str, Any]] | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    colours = {s.name: PALETTE[i % len(PALETTE)] for i, s in enumerate(report.candidates)}
    measures: list[tuple[str, str]] = [(report.primary_metric, report.primary_metric)]
    measures += [(k, LABELS[k]) for k in COST_SPEED]
    charts = [
        bar_chart(
            title,
            [
                (s.name, s.primary if key == report.primary_metric else getattr(s, key), colours[s.name])
                for s in report.candidates
            ],
        )
        for key, title in measures
    ]
    quality = quality_metrics(report)
    return _ENV.get_template("report.html.j2").render(
        report=report,
        name=Path(report.data).name,
        created=time.strftime("%Y-%m-%d %H:%M", time.localtime(report.created)),
        head=[
            "candidate",
            "shots",
            *(METRIC_LABELS.get(k, k) for k in quality),
            *(LABELS[k] for k in COST_SPEED),
            "errors",
        ],
        rows=_summary_rows(report, quality),
        charts=charts,
        judged=[s for s in report.candidates if s.judge and s.name != report.baseline],
        confusions=[c for s in report.candidates if (c := _confusion(s)) is not None],
        loss_charts=[_loss_chart(c, PALETTE[0], PALETTE[2]) for c in loss_curves or []],
    )


def write_html(path: Path, report: EvalReport, loss_curves: list[dict[str, Any]] | None = None) -> Path:
    """Write :func:`render_html` to ``path`` (parent folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, loss_curves), encoding="utf-8")
    return path
