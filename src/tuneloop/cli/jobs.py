"""``tuneloop jobs``: create, inspect, control and follow fine-tuning jobs through the server's API."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from tuneloop.cli.client import DEFAULT_BASE_URL, BaseUrl, connect, output_console, table, timestamp
from tuneloop.cli.options import BatchSize, Beta, Epochs, LearningRateMultiplier, Method, TrainingMethod
from tuneloop.errors import TuneloopError
from tuneloop.jobs.follow import EVENTS_PAGE, print_event
from tuneloop.jobs.follow import watch as follow_on

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob

app = typer.Typer(help="Fine-tuning jobs on the tuneloop server (OpenAI's Fine-tuning API).", no_args_is_help=True)


def check_metadata(values: list[str]) -> list[str]:
    """An option callback: every ``--metadata`` value must be ``KEY=VALUE``."""
    for item in values:
        if not item.partition("=")[0] or "=" not in item:
            raise typer.BadParameter(f"expected KEY=VALUE, got '{item}'")
    return values


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _extra(obj: Any, name: str) -> Any:
    """A field the server sends beyond OpenAI's schema (kept by the client's lenient parsing)."""
    return (obj.model_extra or {}).get(name)


def _hyperparameters(job: FineTuningJob) -> str:
    hp = job.hyperparameters
    if hp is None:
        return "-"
    return f"epochs={hp.n_epochs} batch_size={hp.batch_size} lr_multiplier={hp.learning_rate_multiplier}"


@app.command("create")
def create(
    model: str = typer.Option(..., "--model", help="Base model (a catalog name) or a fine-tuned model id."),
    training_file: str = typer.Option(..., "--training-file", help="Id of an uploaded .jsonl file (file-...)."),
    validation_file: str | None = typer.Option(None, "--validation-file", help="Id of a validation file."),
    epochs: Epochs = "auto",
    batch_size: BatchSize = "auto",
    lr_multiplier: LearningRateMultiplier = "auto",
    suffix: str | None = typer.Option(None, "--suffix", help="Up to 64 characters added to the model id."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for reproducible training."),
    method: Method = TrainingMethod.lora,
    beta: Beta = "auto",
    metadata: list[str] = typer.Option(
        [], "--metadata", metavar="KEY=VALUE", callback=check_metadata, help="Tag the job (repeatable)."
    ),
    follow_job: bool = typer.Option(False, "--follow", help="Follow the job until it finishes."),
    interval: float = typer.Option(2.0, "--interval", min=0.05, help="Seconds between polls with --follow."),
    as_json: bool = typer.Option(False, "--json", help="Print the created job as JSON."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Create a fine-tuning job (supervised, or DPO with --method dpo); prints its id (and follows it with --follow)."""
    hyperparameters = {"n_epochs": epochs, "batch_size": batch_size, "learning_rate_multiplier": lr_multiplier}
    if beta != "auto" and method.objective != "dpo":
        raise typer.BadParameter("--beta is DPO's: use it with --method dpo or dpo-full", param_hint="'--beta'")
    if method.objective == "dpo":
        hyperparameters["beta"] = beta
    optional = {
        "validation_file": validation_file,
        "suffix": suffix,
        "seed": seed,
        "metadata": dict(m.split("=", 1) for m in metadata) or None,
    }
    with connect(base_url) as client:
        job = submit(client, model, training_file, hyperparameters, method, **optional)
        if as_json:
            _echo_json(job.model_dump())
        else:
            typer.echo(f"created {job.id} ({job.status}): {method.value} fine-tuning of {job.model}")
        if not follow_job:
            if not as_json:
                typer.echo(f"follow it with: tuneloop jobs follow {job.id}")
            return
        final = watch(client, job.id, interval)
    finish(final)


def submit(
    client: OpenAI,
    model: str,
    training_file: str,
    hyperparameters: dict[str, int | float | str],
    method: TrainingMethod = TrainingMethod.lora,
    **optional: Any,
) -> FineTuningJob:
    """Create a job (``method`` says supervised or DPO, LoRA or full); ``optional`` holds validation_file, suffix,
    seed, metadata (None: not sent)."""
    kind = method.objective
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        method={"type": kind, kind: {"hyperparameters": hyperparameters}},  # type: ignore[misc]
        extra_body={"training_method": method.weights},
        **{k: v for k, v in optional.items() if v is not None},
    )


@app.command("list")
def list_jobs(
    limit: int = typer.Option(20, "--limit", min=1, help="At most this many jobs (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """List fine-tuning jobs, newest first."""
    with connect(base_url) as client:
        jobs = client.fine_tuning.jobs.list(limit=limit).data
    if as_json:
        _echo_json([j.model_dump() for j in jobs])
        return
    rows = table("id", "status", "model", "method", "fine-tuned model", "created", ids=("model", "fine-tuned model"))
    for j in jobs:
        method = _extra(j, "training_method") or "-"
        rows.add_row(j.id, j.status, j.model, method, j.fine_tuned_model or "-", timestamp(j.created_at, False))
    output_console().print(rows)


@app.command("get")
def get(
    job_id: str = typer.Argument(..., help="Job id (ftjob-...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job object as JSON."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Show one job: status, files, hyperparameters, result."""
    with connect(base_url) as client:
        job = client.fine_tuning.jobs.retrieve(job_id)
    if as_json:
        _echo_json(job.model_dump())
        return
    rows = [
        ("id", job.id),
        ("status", job.status),
        ("model", job.model),
        ("method", _extra(job, "training_method") or "-"),
        ("training file", job.training_file),
        ("validation file", job.validation_file or "-"),
        ("hyperparameters", _hyperparameters(job)),
        ("seed", job.seed),
        ("suffix", _extra(job, "user_provided_suffix") or "-"),
        ("metadata", ", ".join(f"{k}={v}" for k, v in (job.metadata or {}).items()) or "-"),
        ("created", timestamp(job.created_at)),
        ("finished", timestamp(job.finished_at)),
        ("fine-tuned model", job.fine_tuned_model or "-"),
        ("trained tokens", f"{job.trained_tokens:,}" if job.trained_tokens is not None else "-"),
        ("result files", ", ".join(job.result_files or []) or "-"),
    ]
    if job.error is not None and job.error.message:
        rows.append(("error", f"{job.error.message} ({job.error.code})"))
    for name, value in rows:
        typer.echo(f"{name + ':':<18}{value}")


def _control(action: str, job_id: str, base_url: str) -> None:
    with connect(base_url) as client:
        job = getattr(client.fine_tuning.jobs, action)(job_id)
    typer.echo(f"{job.id}: {job.status}")


@app.command("cancel")
def cancel(job_id: str = typer.Argument(..., help="Job id."), base_url: BaseUrl = DEFAULT_BASE_URL) -> None:
    """Cancel a job that has not finished."""
    _control("cancel", job_id, base_url)


@app.command("pause")
def pause(job_id: str = typer.Argument(..., help="Job id."), base_url: BaseUrl = DEFAULT_BASE_URL) -> None:
    """Pause a queued or running job (a running one saves a checkpoint first)."""
    _control("pause", job_id, base_url)


@app.command("resume")
def resume(job_id: str = typer.Argument(..., help="Job id."), base_url: BaseUrl = DEFAULT_BASE_URL) -> None:
    """Resume a paused job from its latest checkpoint."""
    _control("resume", job_id, base_url)


@app.command("events")
def events(
    job_id: str = typer.Argument(..., help="Job id."),
    limit: int = typer.Option(20, "--limit", min=1, help="The latest this many events."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw events (newest first, as the API returns)."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Print a job's latest events, oldest first."""
    with connect(base_url) as client:
        page = client.fine_tuning.jobs.list_events(job_id, limit=limit).data
    if as_json:
        _echo_json([e.model_dump() for e in page])
        return
    console = output_console()
    for event in reversed(page):
        print_event(event, console)


@app.command("checkpoints")
def checkpoints(
    job_id: str = typer.Argument(..., help="Job id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """List a job's saved checkpoints (each usable as a model id)."""
    with connect(base_url) as client:
        items = client.fine_tuning.jobs.checkpoints.list(job_id).data
    if as_json:
        _echo_json([c.model_dump() for c in items])
        return
    rows = table("step", "checkpoint model", "train loss", "valid loss", "created", ids=("checkpoint model",))
    rows.columns[0].justify = "right"
    for c in items:
        m = c.metrics
        losses = [getattr(m, k, None) if m is not None else None for k in ("train_loss", "valid_loss")]
        rows.add_row(
            str(c.step_number),
            c.fine_tuned_model_checkpoint,
            *(f"{v:.4f}" if v is not None else "-" for v in losses),
            timestamp(c.created_at, False),
        )
    output_console().print(rows)


@app.command("follow")
def follow(
    job_id: str = typer.Argument(..., help="Job id."),
    interval: float = typer.Option(2.0, "--interval", min=0.05, help="Seconds between polls."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Watch a job live: progress, loss and new events, until it finishes or pauses.

    Exit code 0 when it succeeded or paused, 1 when it failed or was cancelled.
    """
    with connect(base_url) as client:
        final = watch(client, job_id, interval)
    finish(final)


def watch(client: OpenAI, job_id: str, interval: float = 2.0) -> FineTuningJob:
    """Follow a job on the command's console (:func:`tuneloop.jobs.follow.watch`); returns its last state."""
    return follow_on(client, job_id, interval, console=output_console(), events_page=EVENTS_PAGE)


def finish(job: FineTuningJob) -> None:
    """Report how a followed job ended; failed or cancelled jobs are errors (exit 1)."""
    if job.status == "succeeded":
        tokens = f" ({job.trained_tokens:,} trained tokens)" if job.trained_tokens else ""
        typer.echo(f"{job.id} succeeded: fine-tuned model {job.fine_tuned_model}{tokens}")
    elif job.status == "paused":
        typer.echo(f"{job.id} is paused; continue with: tuneloop jobs resume {job.id}")
    elif job.status == "failed":
        message = job.error.message if job.error is not None and job.error.message else "no reason given"
        raise TuneloopError(f"{job.id} failed: {message}")
    else:
        raise TuneloopError(f"{job.id} was cancelled")
