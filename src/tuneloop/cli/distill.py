"""``tuneloop distill``: a training set from a teacher's answers, split, validated, optionally fine-tuned.

Two sources: a JSONL file of prompts sent to a teacher (any OpenAI-compatible endpoint; answers
cached, so an interrupted run resumes without paying twice), or ``--from-stored``: the stored
completions on the server at ``--base-url``, filtered by ``--teacher-model`` and ``--metadata``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuneloop.cli import jobs
from tuneloop.cli.client import DEFAULT_BASE_URL, BaseUrl, connect, output_console
from tuneloop.cli.options import BatchSize, Epochs, LearningRateMultiplier, Method, TrainingMethod
from tuneloop.data.validate import MIN_EXAMPLES
from tuneloop.distill import run
from tuneloop.distill.cache import AnswerCache
from tuneloop.distill.examples import ExampleSet, read_prompts
from tuneloop.distill.stored import stored_answers
from tuneloop.distill.teacher import DEFAULT_TEACHER_URL, RetryPolicy, Sampling, Teacher, make_teacher_client
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob

SHOWN_DROPS = 10


class _CannotFineTune(TuneloopError):
    exit_code = 1


@contextmanager
def _progress_bar() -> Iterator[run.Progress]:
    """A progress callback drawing a bar on stderr (nothing when stderr is not a terminal)."""
    console = Console(stderr=True)
    columns = (TextColumn("teacher"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("teacher", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _read_tools(path: Path | None) -> list[dict] | None:
    if path is None:
        return None
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TuneloopError(f"{path}: cannot read the tools: {exc}") from exc
    if not isinstance(tools, list):
        raise TuneloopError(f"{path}: expected a JSON list of tools")
    return tools


def _print_summary(summary: run.DistillSummary) -> None:
    rows = Table(box=None, show_header=False, pad_edge=False)
    rows.add_column(overflow="fold")
    rows.add_column(justify="right", no_wrap=True)
    rows.add_row("inputs" if summary.source == "prompts" else "stored completions", str(summary.inputs))
    if summary.source == "prompts":
        rows.add_row("answers from the cache", str(summary.cached))
        rows.add_row("answers from the teacher", str(summary.asked))
        rows.add_row("teacher requests (retries)", f"{summary.teacher_attempts} ({summary.retries})")
    rows.add_row("kept", str(summary.kept))
    rows.add_row("dropped", str(summary.n_dropped))
    for reason, n in summary.dropped.items():
        if n:
            rows.add_row(f"  {reason.replace('_', ' ')}", str(n))
    if summary.truncated:
        rows.add_row("kept but cut at --max-tokens", str(summary.truncated))
    for side in ("train", "valid"):
        if side in summary.files:
            rows.add_row(f"{side} -> {summary.files[side]}", str(getattr(summary, side)))
    if summary.job is not None:
        rows.add_row("fine-tuning job", summary.job["id"])
    console = output_console()
    console.print(rows)
    for drop in summary.dropped_examples[:SHOWN_DROPS]:
        console.print(f"  dropped {drop['source']}: {drop['reason']}: {drop['detail']}", soft_wrap=True)
    if summary.n_dropped > SHOWN_DROPS:
        console.print(f"  ... and {summary.n_dropped - SHOWN_DROPS} more dropped")
    for code, n in {**summary.validation_errors, **summary.validation_warnings}.items():
        kind = "error" if code in summary.validation_errors else "warning"
        console.print(f"validation {kind}: {code} ({n})")


@dataclass(frozen=True)
class TeacherSettings:
    """Where the teacher is and how hard to press it."""

    base_url: str
    model: str
    key_env: str
    concurrency: int
    max_retries: int


def _ask_teacher(
    prompts: Path, settings: TeacherSettings, sampling: Sampling, student: run.StudentOptions, cache_path: Path
) -> tuple[ExampleSet, run.DistillSummary]:
    """The prompts file's answers, from the cache or the teacher (with a progress bar)."""
    items = read_prompts(prompts)  # a bad line stops here, before the teacher is paid anything
    client = make_teacher_client(settings.base_url, os.environ.get(settings.key_env))
    hint = f"set the teacher's key in ${settings.key_env} (or name another variable with --teacher-key-env)"
    teacher = Teacher(client, RetryPolicy(settings.max_retries), key_hint=hint)
    try:
        with _progress_bar() as progress:
            examples, summary = run.distill_prompts(
                items, teacher, settings.model, AnswerCache(cache_path), sampling=sampling, student=student,
                concurrency=settings.concurrency, progress=progress,
            )  # fmt: skip
    finally:
        client.close()
    summary.files["cache"] = str(cache_path)
    return examples, summary


def _report(summary: run.DistillSummary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_summary(summary)


def _create_job(
    client: OpenAI,
    summary: run.DistillSummary,
    model: str,
    hyperparameters: dict,
    method: TrainingMethod,
    suffix: str | None,
) -> FineTuningJob:
    """Upload train (and a non-empty valid) file and create the job; its description goes into ``summary``."""
    if summary.validation_errors or summary.train < MIN_EXAMPLES:
        errors = f" and validation errors {summary.validation_errors}" if summary.validation_errors else ""
        raise _CannotFineTune(
            f"no job created: the training file has {summary.train} example(s) (at least {MIN_EXAMPLES}){errors}"
        )
    training = client.files.create(file=Path(summary.files["train"]), purpose="fine-tune")
    validation = client.files.create(file=Path(summary.files["valid"]), purpose="fine-tune") if summary.valid else None
    job = jobs.submit(
        client, model, training.id, hyperparameters, method,
        validation_file=validation.id if validation else None, suffix=suffix,
    )  # fmt: skip
    summary.job = {"id": job.id, "status": job.status, "model": job.model, "training_file": training.id,
                   "validation_file": validation.id if validation else None}  # fmt: skip
    return job


def distill(
    prompts: Path | None = typer.Argument(
        None, help='JSONL of prompts: {"messages": [...]} per line (a final assistant message is replaced).'
    ),
    output_dir: Path = typer.Option(
        ..., "--output-dir", "-o", help="Folder for train.jsonl, valid.jsonl, distilled.jsonl and the cache."
    ),
    from_stored: bool = typer.Option(False, "--from-stored", help="Use the stored completions at --base-url."),
    metadata: list[str] = typer.Option(
        [],
        "--metadata",
        metavar="KEY=VALUE",
        callback=jobs.check_metadata,
        help="With --from-stored: only completions with this metadata pair (repeatable).",
    ),  # fmt: skip
    tools_file: Path | None = typer.Option(
        None, "--tools", help="With --from-stored: a JSON list of the tools the stored requests offered."
    ),
    teacher_model: str | None = typer.Option(
        None, "--teacher-model", help="The teacher's model (with --from-stored: only completions it answered)."
    ),
    teacher_base_url: str = typer.Option(DEFAULT_TEACHER_URL, "--teacher-base-url", help="The teacher's API URL."),
    teacher_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--teacher-key-env", help="Environment variable holding the teacher's key."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Teacher requests in flight."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries of a failed teacher request."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0, help="The teacher's temperature."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="The teacher's answer length limit."),
    cache: Path | None = typer.Option(
        None, "--cache", help="The teacher's answers, kept across runs. (default: <output-dir>/teacher-cache.jsonl)"
    ),
    student_system: str | None = typer.Option(
        None, "--student-system", help="Replace the system message(s) with this one in the training examples."
    ),
    last_turn_only: bool = typer.Option(
        False,
        "--last-turn-only/--keep-history",
        help="Drop the turns before the last user message (few-shot turns) from the training examples.",
    ),  # fmt: skip
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", min=0.0, max=1.0, help="Share for valid.jsonl."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/valid split."),
    fine_tune: bool = typer.Option(False, "--fine-tune", help="Upload the files and create a fine-tuning job."),
    model: str | None = typer.Option(None, "--model", help="With --fine-tune: the student's base model."),
    suffix: str | None = typer.Option(None, "--suffix", help="With --fine-tune: added to the model id."),
    epochs: Epochs = "auto",
    batch_size: BatchSize = "auto",
    lr_multiplier: LearningRateMultiplier = "auto",
    method: Method = TrainingMethod.lora,
    follow: bool = typer.Option(False, "--follow", help="With --fine-tune: follow the job until it finishes."),
    interval: float = typer.Option(2.0, "--interval", min=0.05, help="Seconds between polls with --follow."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Build a training set from a teacher's answers: train.jsonl and valid.jsonl in --output-dir.

    Each prompt's answer is judged: refusals, invalid JSON (when JSON was asked for), duplicates and
    examples failing `tuneloop data validate`'s checks are dropped and counted.
    """
    if from_stored == (prompts is not None):
        raise typer.BadParameter("give a prompts file or --from-stored (not both)")
    if prompts is not None and not teacher_model:
        raise typer.BadParameter("--teacher-model is required with a prompts file")
    if fine_tune and not model:
        raise typer.BadParameter("--model (the student's base model) is required with --fine-tune")
    if tools_file is not None and not from_stored:
        raise typer.BadParameter("--tools applies to --from-stored (a prompts line carries its own tools)")
    if output_dir.exists() and not output_dir.is_dir():
        raise typer.BadParameter(f"{output_dir} is a file; --output-dir names a folder")
    student = run.StudentOptions(student_system, last_turn_only)
    if prompts is not None:
        cache_path = cache or output_dir / run.CACHE_FILE
        teacher = TeacherSettings(teacher_base_url, teacher_model or "", teacher_key_env, concurrency, max_retries)
        examples, summary = _ask_teacher(prompts, teacher, Sampling(temperature, max_tokens), student, cache_path)
    else:
        metadata_pairs = dict(m.split("=", 1) for m in metadata)
        with connect(base_url) as server:
            answered = stored_answers(server, teacher_model, metadata_pairs, _read_tools(tools_file))
            examples, summary = run.distill_stored(answered, student)
    hyperparameters = {"n_epochs": epochs, "batch_size": batch_size, "learning_rate_multiplier": lr_multiplier}
    with connect(base_url) if fine_tune else nullcontext(None) as server:
        try:
            run.write_dataset(examples, output_dir, summary, valid_fraction, seed)
            if server is not None:
                _create_job(server, summary, model or "", hyperparameters, method, suffix)
        finally:
            _report(summary, as_json)
        if server is None or summary.job is None:
            return
        if not follow:
            if not as_json:
                typer.echo(f"created {summary.job['id']}; follow it with: tuneloop jobs follow {summary.job['id']}")
            return
        final = jobs.watch(server, summary.job["id"], interval)
    jobs.finish(final)
