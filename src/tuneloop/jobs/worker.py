"""The job worker: claims jobs from the store and supervises each in a child process.

While a job runs the worker heartbeats every ``worker_poll_seconds``. A heartbeat that finds the
job no longer ours means it was cancelled (the child is killed at once) or taken over; a job set
to ``paused`` is asked to stop, checkpoints, and is released. If the worker itself dies, the job's
heartbeat goes stale and another worker takes it over and resumes it from its last checkpoint. A
child that dies without recording an outcome (killed, out of memory) is retried the same way, up to
``max_job_attempts`` runs in all.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time

from tuneloop.config import Settings
from tuneloop.jobs.runner import run_job
from tuneloop.store.db import make_engine
from tuneloop.store.ids import random_id
from tuneloop.store.jobs import Job, JobStore, NewEvent

log = logging.getLogger(__name__)
GRACE_SECONDS = 60.0  # how long a pausing or shutting-down child may take to checkpoint


class Worker:
    """One worker: runs at most one job at a time."""

    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{random_id('', 6)}"
        self.jobs = JobStore(make_engine(settings))
        self.shutdown = threading.Event()

    def run_forever(self) -> None:
        """Claim and run jobs until ``shutdown`` is set."""
        log.info("worker %s started", self.worker_id)
        while not self.shutdown.is_set():
            if not self.run_once():
                self.shutdown.wait(self.settings.worker_poll_seconds)

    def run_once(self) -> bool:
        """Run the next claimable job, if any; True when one was run."""
        job = self.jobs.claim(self.worker_id, self.settings.worker_stale_seconds)
        if job is None:
            return False
        log.info("worker %s claimed %s (attempt %d)", self.worker_id, job.id, job.attempts)
        self._supervise(job)
        return True

    def _supervise(self, job: Job) -> None:
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        child = ctx.Process(
            target=run_job,
            args=(self.settings.model_dump_json(), job.id, self.worker_id, stop, os.getpid()),
            name=f"tuneloop-job-{job.id}",
            daemon=False,
        )
        child.start()
        stopping_since: float | None = None
        while child.is_alive():
            child.join(self.settings.worker_poll_seconds)
            status = self.jobs.heartbeat(job.id, self.worker_id)
            if status is None:  # cancelled or taken over: stop spending compute at once
                _kill(child)
                break
            if status == "paused" or self.shutdown.is_set():
                if stopping_since is None:
                    stopping_since, _ = time.time(), stop.set()
                elif time.time() - stopping_since > GRACE_SECONDS:
                    _kill(child)
        self._settle(job, child.exitcode)

    def _settle(self, job: Job, exitcode: int | None) -> None:
        """Record what became of a job whose child has exited."""
        current = self.jobs.get(job.id)
        if current is None or current.worker_id != self.worker_id:
            return
        if current.status == "paused":
            self.jobs.release(job.id, self.worker_id)
            self.jobs.add_event(job.id, "Fine-tuning job paused at its latest checkpoint")
        elif current.status == "running" and self.shutdown.is_set():
            self.jobs.update_where(job.id, worker_id=self.worker_id, values={"status": "queued", "worker_id": None})
            self.jobs.add_event(job.id, "Worker shut down; job re-queued and will resume from its latest checkpoint")
        elif current.status == "running":  # the child died without recording an outcome
            cause = exit_cause(exitcode)
            if current.attempts < self.settings.max_job_attempts:
                values = {"status": "queued", "worker_id": None}
                if self.jobs.update_where(job.id, worker_id=self.worker_id, values=values):
                    self.jobs.add_event(job.id, f"The training process {cause}; retrying from the latest checkpoint "
                                        f"(attempt {current.attempts + 1} of {self.settings.max_job_attempts})",
                                        level="warn")  # fmt: skip
                return
            message = f"The training process {cause} in each of {current.attempts} attempts"
            error = {"code": "training_error", "message": message, "param": None}
            self.jobs.finish(job.id, "failed", error=error, event=NewEvent(message, "error"))


def exit_cause(exitcode: int | None) -> str:
    """How a child process ended, in words: ``was killed (SIGKILL)`` or ``exited with code 3``."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _kill(child) -> None:
    child.terminate()
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
