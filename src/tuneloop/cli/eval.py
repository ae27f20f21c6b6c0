"""``tuneloop eval``: compare the base model (zero- and few-shot) with fine-tuned models on held-out data."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from tuneloop.cli.client import make_client
from tuneloop.errors import TuneloopError
from tuneloop.evals import (
    Candidate,
    EvalConfig,
    JudgeConfig,
    build_report,
    parse_metrics_csv,
    print_report,
    read_metrics_csv,
    run_eval,
    write_html,
    write_json,
)
from tuneloop.evals.runner import EndpointUnreachableError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
PLACEHOLDER_KEY = "tuneloop"
GRADERS = ("auto", "string_check", "exact", "classification", "json", "text_similarity", "judge")
OPERATIONS = ("eq", "ne", "like", "ilike")


PREAMBLE_ROLES = ("system", "developer", "user", "assistant")


class _BadOption(TuneloopError):
    exit_code = 2


def _console() -> Console:
    """Rich console on stdout, wide when piped so the table is not squeezed to 80 columns."""
    console = Console()
    return console if console.is_terminal or os.environ.get("COLUMNS") else Console(width=200)


def _other_endpoint_key() -> str | None:
    """The key sent to endpoints other than tuneloop's (a hosted model, a hosted judge)."""
    return os.environ.get("OPENAI_API_KEY")


def _parse_candidate(spec: str) -> tuple[str, str | None]:
    """``MODEL`` or ``MODEL@BASE_URL``."""
    model, sep, url = spec.partition("@")
    if not model or (sep and not url.startswith(("http://", "https://"))):
        raise _BadOption(f"--candidate '{spec}': expected MODEL or MODEL@http(s)://HOST/v1")
    return model, url or None


def _read_preamble(path: Path) -> tuple[dict, ...]:
    """A teacher's prompt file: text is one system message; a ``.json`` file is a list of messages."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return ({"role": "system", "content": text},)
    try:
        messages = json.loads(text)
    except ValueError as exc:
        raise _BadOption(f"{path.name}: not JSON ({exc})") from None
    if not isinstance(messages, list) or not messages:
        raise _BadOption(f"{path.name}: expected a non-empty JSON list of messages")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in PREAMBLE_ROLES and isinstance(m.get("content"), str)):
            raise _BadOption(
                f'{path.name}: message {i}: expected {{"role": {"|".join(PREAMBLE_ROLES)}, "content": "..."}}'
            )
    return tuple(messages)


def _job_curves(job_ids: list[str], base_url: str, api_key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Loss curves from each job's result file, and the jobs' fine-tuned models."""
    import openai  # imported here: it takes ~0.5 s, which `tuneloop --help` and the other commands never need

    curves, models = [], []
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=1, timeout=60)
    try:
        for job_id in job_ids:
            job = client.fine_tuning.jobs.retrieve(job_id)
            label = job.fine_tuned_model or job_id
            if job.fine_tuned_model:
                models.append(job.fine_tuned_model)
            if not job.result_files:
                typer.echo(f"warning: job {job_id} has no result file (status {job.status}); no loss curve", err=True)
                continue
            text = client.files.content(job.result_files[0]).text
            try:
                curves.append(parse_metrics_csv(text, label))
            except ValueError as exc:
                typer.echo(f"warning: {exc}", err=True)
    except openai.APIConnectionError as exc:
        raise EndpointUnreachableError(f"cannot reach the tuneloop server at {base_url}") from exc
    except openai.APIStatusError as exc:
        raise _BadOption(f"cannot read job results: HTTP {exc.status_code} {exc.message}") from exc
    finally:
        client.close()
    return curves, models


def _upload_report(report: dict[str, Any], base_url: str, api_key: str) -> None:
    """Upload the report (and its loss curves) as a file with purpose ``evals``, where the dashboard's Evals
    page finds it; a server that refuses it costs a warning, never the evaluation."""
    import openai

    name = f"eval-{time.strftime('%Y%m%d-%H%M%S', time.localtime(report['created']))}.json"
    content = json.dumps(report).encode()
    try:
        uploaded = make_client(base_url, api_key).files.create(file=(name, content), purpose="evals")
    except openai.OpenAIError as exc:
        typer.echo(f"warning: the report was not uploaded to {base_url} ({exc})", err=True)
        return
    typer.echo(f"uploaded the report as {uploaded.id} ({name}): the dashboard's Evals page shows it")


def eval_command(
    data: Path = typer.Option(
        ..., "--data", help="Held-out chat JSONL; each example's last assistant message is the reference."
    ),
    base: str = typer.Option(..., "--base", help="Base model, evaluated zero-shot (and few-shot with --train)."),
    fine_tuned: list[str] = typer.Option([], "--fine-tuned", help="Fine-tuned model or checkpoint id (repeatable)."),
    train: Path | None = typer.Option(None, "--train", help="Training chat JSONL: adds the few-shot base candidate."),
    k: int | None = typer.Option(
        None, "--k", min=0, help="Few-shot examples per prompt (default: fill --fewshot-budget)."
    ),
    fewshot_budget: int = typer.Option(1024, "--fewshot-budget", min=1, help="Token budget for few-shot examples."),
    base_url: str = typer.Option(
        DEFAULT_BASE_URL, "--base-url", envvar="TUNELOOP_BASE_URL", show_envvar=True, help="OpenAI-compatible API URL."
    ),
    candidate: list[str] = typer.Option(
        [],
        "--candidate",
        help="Extra zero-shot candidate: MODEL or MODEL@URL, e.g. a hosted model (its key: OPENAI_API_KEY).",
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help="A distillation's teacher as a candidate: MODEL or MODEL@URL (key: OPENAI_API_KEY)."
    ),
    teacher_prompt: Path | None = typer.Option(
        None,
        "--teacher-prompt-file",
        help="The teacher's own instruction prompt, replacing the data's system message: a text file (one "
        "system message) or a .json list of messages (a system message and few-shot turns, say).",
    ),
    reference: str = typer.Option(
        "data", "--reference", help="data: grade against the held-out answers; teacher: also against the teacher's."
    ),
    grader: str = typer.Option("auto", "--grader", help=f"One of: {', '.join(GRADERS)}."),
    operation: str = typer.Option("eq", "--operation", help="string_check operation: eq, ne, like, ilike."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="Model for the pairwise judge."),
    judge_base_url: str | None = typer.Option(None, "--judge-base-url", help="Judge endpoint (default: --base-url)."),
    baseline: str | None = typer.Option(None, "--baseline", help="Candidate name for ratios (default: few-shot base)."),
    tfidf: bool = typer.Option(
        True,
        "--tfidf/--no-tfidf",
        help="On a label set with --train, add the TF-IDF + logistic regression candidate (tuneloop[eval]).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate only the first N examples."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Longest answer, in tokens."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight at once."),
    seed: int = typer.Option(0, "--seed", help="Seed for few-shot selection and judge order."),
    metrics_csv: list[Path] = typer.Option(
        [], "--metrics-csv", help="Training metrics CSV for loss curves (repeatable)."
    ),
    job: list[str] = typer.Option(
        [], "--job", help="Fine-tuning job id: its loss curve, and its model as a candidate."
    ),
    out: Path | None = typer.Option(None, "--out", help="Folder for report.json and report.html."),
    examples: int = typer.Option(5, "--examples", min=0, help="Disagreement examples to show."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    upload: bool = typer.Option(
        True, "--upload/--no-upload", help="Upload the report to the server (purpose evals): the dashboard shows it."
    ),
) -> None:
    """Evaluate base (zero-shot, few-shot) and fine-tuned models on held-out data through the API.

    With --teacher and --reference teacher (a distilled student against its teacher) every candidate
    is also graded against the teacher's answers (teacher_agreement, the primary metric). Prints
    quality, tokens and latency per candidate with ratios against the few-shot baseline;
    on a label set with --train also a local TF-IDF + logistic regression candidate and each
    candidate's invalid and wrong label rates; with --out also writes report.json and report.html.
    """
    if grader not in GRADERS:
        raise _BadOption(f"unknown grader '{grader}'; choose one of: {', '.join(GRADERS)}")
    if operation not in OPERATIONS:
        raise _BadOption(f"unknown string_check operation '{operation}'; choose one of: {', '.join(OPERATIONS)}")
    if reference not in ("data", "teacher"):
        raise _BadOption(f"--reference '{reference}': choose data or teacher")
    if reference == "teacher" and teacher is None:
        raise _BadOption("--reference teacher needs --teacher MODEL[@URL]")
    if grader == "judge" and not judge_model:
        raise _BadOption("--grader judge needs --judge-model")
    for path in [data, *([train] if train else []), *([teacher_prompt] if teacher_prompt else []), *metrics_csv]:
        if not path.is_file():
            raise _BadOption(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    api_key = os.environ.get("TUNELOOP_API_KEY") or PLACEHOLDER_KEY

    curves = [read_metrics_csv(p) for p in metrics_csv]
    if job:
        job_curves, job_models = _job_curves(job, base_url, api_key)
        curves += job_curves
        fine_tuned = [*fine_tuned, *(m for m in job_models if m not in fine_tuned)]

    candidates = [Candidate("base zero-shot", base)]
    if train is not None and k != 0:
        label = f"k={k}" if k is not None else f"≤{fewshot_budget} tokens"
        candidates.append(Candidate(f"base few-shot ({label})", base, few_shot=k if k is not None else "auto"))
    candidates += [Candidate(model, model) for model in dict.fromkeys(fine_tuned)]
    for spec in candidate:
        model, url = _parse_candidate(spec)
        name = f"{model}@{url.split('//', 1)[1].split('/', 1)[0]}" if url else model
        key = _other_endpoint_key() if url and url != base_url else None
        candidates.append(Candidate(name, model, base_url=url, api_key=key))
    if teacher is not None:
        model, url = _parse_candidate(teacher)
        key = _other_endpoint_key() if url and url != base_url else None
        preamble = _read_preamble(teacher_prompt) if teacher_prompt else None
        candidates.append(
            Candidate(f"teacher: {model}", model, base_url=url, api_key=key, preamble=preamble, teacher=True)
        )
    if train is None:
        typer.echo("note: no --train file, so no few-shot baseline; ratios are against the zero-shot base", err=True)

    judge = None
    if judge_model:
        other = judge_base_url and judge_base_url != base_url
        judge = JudgeConfig(judge_model, judge_base_url, _other_endpoint_key() if other else None)
    config = EvalConfig(
        data=data,
        candidates=candidates,
        train=train,
        base_url=base_url,
        api_key=api_key,
        grader=grader,
        string_check_operation=operation,  # type: ignore[arg-type]
        judge=judge,
        limit=limit,
        max_tokens=max_tokens,
        concurrency=concurrency,
        fewshot_budget=fewshot_budget,
        seed=seed,
        baseline=baseline,
        classical_baseline=tfidf,
        progress=progress,
        reference=reference,  # type: ignore[arg-type]
    )
    report = build_report(run_eval(config), disagreements=examples)
    print_report(report, _console(), examples=examples > 0)
    if out is not None:
        json_path = write_json(out / "report.json", report)
        html_path = write_html(out / "report.html", report, curves or None)
        typer.echo(f"wrote {json_path} and {html_path}")
    if upload:
        _upload_report({**report.to_dict(), "curves": curves}, base_url, api_key)
