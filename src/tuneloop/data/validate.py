"""The data validator: stream a JSONL training file, report every problem by line, count tokens.

Memory stays flat however large the file: lines are read one at a time, token counts go into
histograms (exact percentiles, bounded by the context length), and duplicate detection keeps a
12-byte digest per example. Token counts come from ``ChatRenderer``, i.e. exactly the ids and loss
mask the trainer will use.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.checks import CHECKS, Problem
from tuneloop.data.estimate import AnswerProfile, auto_epochs, training_seconds
from tuneloop.data.examples import (
    ChatExample,
    CompletionExample,
    Example,
    Format,
    PreferenceExample,
    detect_format,
    final_answer,
    parse_example,
    render_examples,
)
from tuneloop.data.render import ChatRenderer, TemplateError

MIN_EXAMPLES = 10
RENDER_BATCH = 1024


@dataclass
class Issue:
    """A problem at a line of the file (``line`` is None for file-level issues)."""

    line: int | None
    code: str
    message: str


@dataclass
class Distribution:
    """Summary of a per-example quantity."""

    min: float
    max: float
    mean: float
    median: float
    p5: float
    p95: float


class Histogram:
    """Exact quantiles of integer values in memory bounded by the number of distinct values."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.total = 0

    def add(self, value: int) -> None:
        self.counts[value] += 1
        self.n += 1
        self.total += value

    def quantile(self, q: float) -> float:
        """The q-quantile (nearest rank)."""
        rank = max(1, round(q * self.n + 0.5 - 1e-9)) if q > 0 else 1
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen >= rank:
                return value
        return 0

    def summary(self) -> Distribution | None:
        if not self.n:
            return None
        lo, hi = min(self.counts), max(self.counts)
        return Distribution(
            lo, hi, round(self.total / self.n, 2), self.quantile(0.5), self.quantile(0.05), self.quantile(0.95)
        )


@dataclass
class TokenStats:
    """Token statistics of the examples without errors, as the trainer will see them."""

    limit: int
    total_tokens: Distribution | None
    trained_tokens: Distribution | None
    messages_per_example: Distribution | None
    n_truncated: int
    dataset_tokens: int


@dataclass
class Estimate:
    """What training on this file will cost with ``"auto"`` epochs."""

    n_epochs: int
    epochs_rule: str
    trained_tokens: int
    seconds: float | None


@dataclass
class ValidationReport:
    """Everything the validator found out about a file."""

    path: str
    format: Format | None
    n_examples: int
    n_errors: int
    errors: list[Issue]
    warnings: list[Issue]
    error_counts: dict[str, int]
    warning_counts: dict[str, int]
    stats: TokenStats | None = None
    estimate: Estimate | None = None

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    max_issues: int
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    error_counts: Counter[str] = field(default_factory=Counter)
    warning_counts: Counter[str] = field(default_factory=Counter)
    n_with_system: int = 0
    n_without_system: int = 0
    first_without_system: list[int] = field(default_factory=list)

    def error(self, line: int | None, code: str, message: str) -> None:
        self.error_counts[code] += 1
        if len(self.errors) < self.max_issues:
            self.errors.append(Issue(line, code, message))

    def count_system(self, line: int, has_system: bool) -> None:
        if has_system:
            self.n_with_system += 1
            return
        self.n_without_system += 1
        if len(self.first_without_system) < 5:
            self.first_without_system.append(line)

    def warn(self, line: int | None, code: str, message: str) -> None:
        self.warning_counts[code] += 1
        if len(self.warnings) < self.max_issues:
            self.warnings.append(Issue(line, code, message))


def validate_file(
    path: Path,
    renderer: ChatRenderer | None = None,
    limit: int | None = None,
    n_params: int | None = None,
    max_issues: int = 10_000,
) -> ValidationReport:
    """Validate a training file; with a ``renderer``, also count tokens and estimate training.

    ``limit`` is the longest example in tokens (the model's context or the training max length);
    longer examples are reported as ``too_many_tokens`` and truncated by the trainer.
    """
    state = _State(max_issues)
    fmt: Format | None = None
    n_examples = 0
    digests, digest_lines = array("q"), array("I")
    tokens = _TokenCounter(renderer, limit or 0, state) if renderer is not None else None
    answers = AnswerProfile()

    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            n_examples += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                state.error(line, "invalid_encoding", f"bytes that are not UTF-8 at column {exc.start + 1}")
                continue
            except json.JSONDecodeError as exc:
                state.error(line, "invalid_json", f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                state.error(line, "data_type", f"each line must be a JSON object, got {type(obj).__name__}")
                continue
            line_fmt = detect_format(obj) or "chat"
            if fmt is None:
                fmt = line_fmt
            elif line_fmt != fmt:
                state.error(line, "data_type", f"a {line_fmt} example in a {fmt} file (formats cannot be mixed)")
                continue
            problems: list[Problem] = CHECKS[fmt](obj)
            for p in problems:
                state.error(line, p.code, p.message)
            digests.append(hash(raw.strip()))
            digest_lines.append(line)
            if problems:
                continue
            if fmt == "chat":
                state.count_system(line, obj["messages"][0].get("role") == "system")
            example = parse_example(obj, fmt, line)
            answers.add(final_answer(example))
            if tokens is not None:
                tokens.add(line, example)

    if tokens is not None:
        tokens.flush()
    _warn_duplicates(state, digests, digest_lines)
    _warn_system_mixture(state)
    if n_examples < MIN_EXAMPLES:
        state.error(
            None, "too_few_examples", f"the file has {n_examples} example(s); at least {MIN_EXAMPLES} are needed"
        )

    by_line = lambda issue: issue.line or 0  # noqa: E731
    report = ValidationReport(
        path=str(path),
        format=fmt,
        n_examples=n_examples,
        n_errors=sum(state.error_counts.values()),
        errors=sorted(state.errors, key=by_line),
        warnings=sorted(state.warnings, key=by_line),
        error_counts=dict(state.error_counts),
        warning_counts=dict(state.warning_counts),
    )
    if tokens is not None and tokens.total.n:
        report.stats = tokens.stats()
        n_epochs, rule = auto_epochs(tokens.total.n, answers.n_labels)
        billed = n_epochs * report.stats.dataset_tokens  # sum of min(tokens, limit) x epochs
        seconds = round(training_seconds(n_params, billed), 1) if n_params else None
        report.estimate = Estimate(n_epochs, rule, billed, seconds)
    return report


def _warn_system_mixture(state: _State) -> None:
    n_with, n_without = state.n_with_system, state.n_without_system
    if n_with and n_without:
        lines = ", ".join(map(str, state.first_without_system))
        state.warn(
            state.first_without_system[0],
            "missing_system_message",
            f"{n_without} example(s) have no system message while {n_with} do (first at lines {lines}); "
            "the model's default system prompt is used for them",
        )


def _warn_duplicates(state: _State, digests: array, lines: array) -> None:
    import numpy as np

    if len(digests) < 2:
        return
    d = np.frombuffer(digests, dtype=np.int64)
    order = np.argsort(d, kind="stable")
    sorted_d = d[order]
    dup = np.nonzero(sorted_d[1:] == sorted_d[:-1])[0]
    first_of: dict[int, int] = {}
    for i in dup:
        first = first_of.setdefault(int(sorted_d[i]), int(lines[order[i]]))
        line = int(lines[order[i + 1]])
        state.warn(line, "duplicate_example", f"exact duplicate of line {first}")


class _TokenCounter:
    """Renders valid examples in batches and accumulates token statistics."""

    def __init__(self, renderer: ChatRenderer, limit: int, state: _State):
        self.renderer = renderer
        self.limit = limit or renderer.tokenizer.model_max_length
        self.state = state
        self.pending: list[tuple[int, Example]] = []
        self.total, self.trained, self.messages = Histogram(), Histogram(), Histogram()
        self.n_truncated = 0

    def add(self, line: int, example: Example) -> None:
        self.pending.append((line, example))
        if len(self.pending) >= RENDER_BATCH:
            self.flush()

    def flush(self) -> None:
        batch = [
            (
                line,
                ChatExample(ex.messages + [ex.preferred], ex.tools, line) if isinstance(ex, PreferenceExample) else ex,
            )
            for line, ex in self.pending
        ]
        self.pending = []
        try:
            rendered = render_examples(self.renderer, [ex for _, ex in batch])
        except TemplateError:  # find the culprit(s) one by one
            rendered = []
            for line, ex in batch:
                try:
                    rendered.extend(render_examples(self.renderer, [ex]))
                except TemplateError as exc:
                    self.state.error(line, "invalid_template", str(exc))
                    rendered.append(None)
        for (line, ex), r in zip(batch, rendered, strict=True):
            if r is None:
                continue
            n = len(r.input_ids)
            self.total.add(n)
            self.trained.add(sum(r.mask[: self.limit]))
            self.messages.add(len(ex.messages) if isinstance(ex, ChatExample) else 2)
            if n > self.limit:
                self.n_truncated += 1
                lost = ", leaving no trained tokens" if not any(r.mask[: self.limit]) else ""
                self.state.warn(line, "too_many_tokens", f"{n} tokens; truncated to the first {self.limit}{lost}")
            elif not isinstance(ex, CompletionExample) and sum(r.mask) == 0:
                self.state.error(line, "no_trainable_tokens", "the rendered example has no trained tokens")

    def stats(self) -> TokenStats:
        dataset = sum(min(v, self.limit) * c for v, c in self.total.counts.items())
        return TokenStats(
            self.limit, self.total.summary(), self.trained.summary(), self.messages.summary(), self.n_truncated, dataset
        )
