"""The evaluation report's figures: quality, cost and speed per candidate, against a baseline.

``build_report`` turns an :class:`~tuneloop.evals.runner.EvalRun` into an :class:`EvalReport`,
written as JSON by ``write_json``; ``parse_metrics_csv`` reads a training loss curve. The report is
printed by :mod:`tuneloop.evals.report_terminal` and written as an HTML page by
:mod:`tuneloop.evals.report_html`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.evals.baseline import NAME as CLASSICAL_NAME
from tuneloop.evals.graders import judge_summary, normalize_text
from tuneloop.evals.labels import label_rates

if TYPE_CHECKING:
    from tuneloop.evals.runner import CandidateRun, EvalRun

#: The measures compared against the baseline, after the primary quality metric.
COST_SPEED = ("mean_prompt_tokens", "mean_completion_tokens", "mean_latency_s", "tokens_per_second")
LABELS = {
    "mean_prompt_tokens": "prompt tokens",
    "mean_completion_tokens": "completion tokens",
    "mean_latency_s": "latency (s)",
    "tokens_per_second": "tokens/s",
}
#: Column headings of metrics whose keys are long.
METRIC_LABELS = {"invalid_label_rate": "invalid", "wrong_label_rate": "wrong"}
#: Quality metrics where lower is better.
LOWER_IS_BETTER = ("no_label_rate", "invalid_label_rate", "wrong_label_rate")
DEFAULT_DISAGREEMENTS = 5


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
    #: The known labels on a label set (held-out references and training answers), else None.
    labels: list[str] | None = None
    #: Notes for the reader (e.g. why the TF-IDF baseline is missing).
    notes: list[str] = field(default_factory=list)

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
    if run.label_outcomes is not None:
        metrics.update(label_rates(run.label_outcomes))
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
                "label": r.label_outcomes[item.index] if r.label_outcomes is not None else None,
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
        labels=run.labels,
        notes=list(run.notes) + baseline_verdicts(summaries, primary_metric),
    )


def baseline_verdicts(summaries: list[CandidateSummary], metric: str) -> list[str]:
    """One line per candidate: does it beat the classical baseline (TF-IDF), and by how much?

    A fine-tuned model (``ft:…``) that does not gets a warning with what to try.
    """
    classical = next((s for s in summaries if s.name == CLASSICAL_NAME), None)
    if classical is None or not math.isfinite(classical.primary):
        return []
    lines = []
    for s in summaries:
        if s is classical or not math.isfinite(s.primary):
            continue
        gap = 100 * (s.primary - classical.primary)
        if gap > 0:
            lines.append(f"{s.name} beats the {CLASSICAL_NAME} baseline by {gap:.1f} points of {metric}")
        elif s.model.startswith("ft:"):
            lines.append(
                f"warning: the fine-tuned {s.name} does not beat the {CLASSICAL_NAME} baseline "
                f"({-gap:.1f} points of {metric} behind): try more examples per label or more epochs, "
                "or serve the classifier"
            )
        else:
            lines.append(f"{s.name} trails the {CLASSICAL_NAME} baseline by {-gap:.1f} points of {metric}")
    return lines


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


def write_json(path: Path, report: EvalReport) -> Path:
    """Write the report's JSON to ``path`` (parent folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json() + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- formatting (terminal and HTML)


def fmt(value: float | None) -> str:
    """A figure in about three significant digits ("-" when missing or not finite)."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.3g}"


def quality_metrics(report: EvalReport) -> list[str]:
    """The quality columns: the primary metric first; ``no_label_rate`` only where no invalid-label rate."""
    keys = list(dict.fromkeys(k for s in report.candidates for k in s.metrics))
    hide = {report.primary_metric} | ({"no_label_rate"} if "invalid_label_rate" in keys else set())
    return [report.primary_metric] + [k for k in keys if k not in hide]


def shots_label(s: CandidateSummary) -> str:
    """How many few-shot examples a candidate saw (the mean for a token budget)."""
    if not s.few_shot:
        return "0"
    return f"{s.mean_shots:.3g}" if s.few_shot == "auto" else str(s.few_shot)


def clip(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
