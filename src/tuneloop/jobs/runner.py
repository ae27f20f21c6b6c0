"""Run one fine-tuning job inside a child process: train, record events and checkpoints, publish the model.

The worker process supervises this one; a crash here never takes the server or the worker down.
A job picked up again after its worker died resumes from its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from multiprocessing.synchronize import Event
from pathlib import Path

import torch

from tuneloop.config import Settings
from tuneloop.cpu import set_priority
from tuneloop.errors import TuneloopError
from tuneloop.jobs.spec import JobSpec
from tuneloop.store.db import make_engine
from tuneloop.store.files import FileStore
from tuneloop.store.ids import fine_tuned_model_id
from tuneloop.store.jobs import Job, JobStore, NewEvent
from tuneloop.train.checkpoint import STEP_KEY, latest_checkpoint, read_meta
from tuneloop.train.config import ResolvedHyperparameters
from tuneloop.train.loop import train
from tuneloop.train.metrics import DPO_COLUMNS, CheckpointInfo, StepMetrics, TrainCallbacks

log = logging.getLogger(__name__)
METRIC_KEYS = (
    "step",
    "total_steps",
    "train_loss",
    "valid_loss",
    "full_valid_loss",
    "train_mean_token_accuracy",
    "valid_mean_token_accuracy",
    "full_valid_mean_token_accuracy",
    "full_valid_answer_accuracy",
)
#: DPO's metrics, in a DPO job's events and checkpoints only.
DPO_METRIC_KEYS = tuple(DPO_COLUMNS)


def job_dir(settings: Settings, job_id: str) -> Path:
    """Where a job's outputs live."""
    return settings.home / "jobs" / job_id


def step_message(m: StepMetrics) -> str:
    """OpenAI's metrics event text: ``Step n/N: training loss=0.15, validation loss=0.27`` (DPO: and the
    preference accuracies)."""
    text = f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.2f}"
    if m.train_preference_accuracy is not None:
        text += f", preference accuracy={m.train_preference_accuracy:.1%}"
    if m.valid_loss is not None:
        text += f", validation loss={m.valid_loss:.2f}"
    if m.full_valid_loss is not None:
        text += f", full validation loss={m.full_valid_loss:.2f}"
    if m.full_valid_answer_accuracy is not None:
        text += f", answer accuracy={m.full_valid_answer_accuracy:.1%}"
    if m.full_valid_preference_accuracy is not None:
        text += f", validation preference accuracy={m.full_valid_preference_accuracy:.1%}"
    return text


def metrics_data(m: StepMetrics) -> dict:
    """A metrics event's ``data``: OpenAI's keys (and ours), plus DPO's where the run computed them."""
    data = {k: getattr(m, k) for k in METRIC_KEYS}
    return data | {k: v for k in DPO_METRIC_KEYS if (v := getattr(m, k)) is not None}


def threads_message(threads: int, adaptive: bool, nice: int) -> str:
    """The job event that says how training shares the CPU."""
    text = f"Training on {threads} CPU thread{'s' if threads != 1 else ''}"
    if adaptive and threads > 1:
        text += " (one while other work shares the cores)"
    return f"{text} at OS priority nice {nice}"


def _watch_parent(parent_pid: int) -> None:
    """Exit at once if the supervising worker dies (the job will be taken over and resumed)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def run_job(settings_json: str, job_id: str, worker_id: str, stop: Event, parent_pid: int) -> None:
    """Child-process entry point: train ``job_id`` to completion, or until ``stop`` is set."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    settings = Settings.model_validate_json(settings_json)
    with contextlib.suppress(AttributeError, OSError):  # a session (autogroup) of its own, for set_priority to lower
        os.setsid()
    nice = set_priority(settings.train_nice)  # serving on the same machine, and all else, goes first
    engine = make_engine(settings)
    jobs, files = JobStore(engine), FileStore(engine, settings.home)
    job = jobs.get(job_id)
    if job is None:
        return
    try:
        _train_job(settings, jobs, files, job, worker_id, stop, nice)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = {"code": "training_error", "message": f"{type(exc).__name__}: {exc}", "param": None}
        current = jobs.get(job_id)
        if current is not None and current.worker_id == worker_id:
            failed = NewEvent(f"Fine-tuning failed: {error['message']}", "error",
                              {"traceback": traceback.format_exc()[-4000:]})  # fmt: skip
            jobs.finish(job_id, "failed", error=error, event=failed)


def _train_job(
    settings: Settings, jobs: JobStore, files: FileStore, job: Job, worker_id: str, stop: Event, nice: int
) -> None:
    out = job_dir(settings, job.id)
    resume = latest_checkpoint(out / "checkpoints")
    if resume is None:
        jobs.delete_metrics_after(job.id, 0)  # a run that died before its first checkpoint
        jobs.add_event(job.id, "Fine-tuning job started", data=None)
    else:  # the steps after the checkpoint run again: their first run's metrics go
        jobs.delete_metrics_after(job.id, read_meta(resume)[STEP_KEY])
        jobs.add_event(job.id, f"Fine-tuning job resumed from checkpoint {resume.name} (attempt {job.attempts})")
    spec = JobSpec.of(job)
    config = spec.train_config(settings, files, out, resume=resume is not None, start_from=_start_from(jobs, spec))
    model_id = fine_tuned_model_id(spec.base_model, settings.org, spec.suffix, job.id)  # checkpoints share its id
    callbacks = _callbacks(jobs, job.id, worker_id, model_id, out, settings.adaptive_threads, nice)
    result = train(config, callbacks, stop.is_set, settings=settings)
    if result.stopped:
        return  # paused or cancelled: the worker records the outcome
    if result.best_epoch is not None:
        best, what = result.best_epoch, "preference" if result.objective == "dpo" else "answer"
        jobs.add_event(job.id, f"The fine-tuned model is epoch {best.epoch} (step {best.step}): the best validation "
                       f"{what} accuracy ({best.answer_accuracy:.1%}, loss {best.loss:.2f})")  # fmt: skip
    results = files.create_bytes("step_metrics.csv", "fine-tune-results", result.metrics_csv.read_bytes())
    jobs.add_model(model_id, spec.base_model, job.id, result.method, str(result.weights_path))
    jobs.add_event(job.id, f"New fine-tuned model created: {model_id}")
    resolved = result.hyperparameters.model_dump()
    done = NewEvent("The job has successfully completed")
    if not jobs.finish(job.id, "succeeded", event=done, fine_tuned_model=model_id,
                       trained_tokens=result.trained_tokens, result_files=[results.id], resolved=resolved,
                       estimated_finish=None):  # fmt: skip
        jobs.delete_model(model_id)  # cancelled in the very last moment: do not publish the model


def _start_from(jobs: JobStore, spec: JobSpec) -> Path | None:
    """The weights of the fine-tuned model or checkpoint a job starts from (None: its base model)."""
    if spec.model == spec.base_model:
        return None
    weights = jobs.trained_weights(spec.model)
    if weights is None:
        raise TuneloopError(f"{spec.model}, the model this job starts from, no longer exists")
    return weights.path


def _callbacks(
    jobs: JobStore, job_id: str, worker_id: str, model_id: str, out: Path, adaptive: bool, nice: int
) -> TrainCallbacks:
    """Record the run in the job: resolved hyperparameters, step metrics and estimate, checkpoints."""
    started = time.time()
    first_step: int | None = None  # the step this attempt started from (resumes start midway)

    def on_start(resolved: ResolvedHyperparameters) -> None:
        jobs.update_where(job_id, worker_id=worker_id, values={"resolved": resolved.model_dump()})
        threads = torch.get_num_threads()  # as the training loop set them up
        data = {"threads": threads, "adaptive_threads": adaptive, "nice": nice, "pid": os.getpid()}
        jobs.add_event(job_id, threads_message(threads, adaptive, nice), data=data)

    def on_step(m: StepMetrics) -> None:
        nonlocal first_step
        if first_step is None:
            first_step = m.step - 1
        done_here = max(1, m.step - first_step)
        finish = int(time.time() + (time.time() - started) / done_here * (m.total_steps - m.step))
        jobs.update_where(job_id, worker_id=worker_id, values={"estimated_finish": finish})
        jobs.add_event(job_id, step_message(m), type="metrics", data=metrics_data(m))

    def on_checkpoint(info: CheckpointInfo) -> None:
        checkpoint_id = f"{model_id}:ckpt-step-{info.step}"
        metrics = {k: v for k, v in metrics_data(info.metrics).items() if k != "total_steps"} if info.metrics else {}
        jobs.add_checkpoint(job_id, info.step, checkpoint_id, metrics, str(info.path))
        existing = {str(p) for p in (out / "checkpoints").iterdir() if p.is_dir()}
        jobs.delete_checkpoints_except(job_id, existing)
        jobs.add_event(job_id, f"Checkpoint created at step {info.step} with Snapshot ID: {checkpoint_id}")

    return TrainCallbacks(on_start=on_start, on_step=on_step, on_checkpoint=on_checkpoint)
