"""Durability: pause/resume, a worker killed mid-training, API keys and upload limits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import openai
import pytest

from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess, chat_jsonl, wait_for


@pytest.fixture
def home(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    return home


def long_job(client, tmp_path, epochs: int = 5):
    """20 examples, batch 1: 20 steps (and a checkpoint) per epoch; long enough to pause or kill on a fast CPU."""
    with open(chat_jsonl(tmp_path / "train.jsonl", 20), "rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id, hyperparameters={"n_epochs": epochs, "batch_size": 1}
    )


def events(client, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100)))]


def test_killed_worker_job_resumes_from_checkpoint(home, tmp_path):
    env = {"TUNELOOP_WORKER_STALE_SECONDS": "3"}
    server = ServerProcess(home, "--no-worker", env=env).wait_ready()
    first = ServerProcess(home, env=env, command="worker")
    second = None
    try:
        client = server.client()
        job = long_job(client, tmp_path)
        wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 180, what="first checkpoint")
        first.stop(kill=True)  # SIGKILL: no chance to clean up
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        second = ServerProcess(home, env=env, command="worker")
        done = wait_for(
            lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j, 240
        )
        assert done.status == "succeeded", done.error
        log = events(client, job.id)
        # the checkpoint of epoch 1 or, on a fast machine, a later one written before the kill
        resumed = [m for m in log if m.startswith("Fine-tuning job resumed from checkpoint step-")]
        assert resumed, log
        step = int(resumed[0].split("step-")[1].split()[0])
        assert step in (20, 40, 60, 80)
        steps = [int(m.split()[1].split("/")[0]) for m in log if m.startswith("Step ")]
        assert steps[-1] == 100 and step + 1 in steps
        assert steps.count(1) == 1  # the resumed run did not start over
    finally:
        for p in (first, second, server):
            if p is not None:
                p.stop()


def test_killed_training_child_is_retried_from_its_checkpoint_with_every_step_once(home, tmp_path):
    server = ServerProcess(home).wait_ready()
    try:
        client = server.client()
        job = long_job(client, tmp_path)

        def training_event():
            return next((e for e in client.fine_tuning.jobs.list_events(job.id) if e.message.startswith("Training")),
                        None)  # fmt: skip

        started = wait_for(training_event, 120, what="the training child")
        wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 180, what="first checkpoint")
        os.kill(started.data["pid"], signal.SIGKILL)  # the OOM killer, a stray kill: the server lives on
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                        300)  # fmt: skip
        assert done.status == "succeeded", done.error
        log = events(client, job.id)
        assert any(m.startswith("The training process was killed (SIGKILL); retrying from the latest checkpoint "
                                "(attempt 2 of 3)") for m in log), log  # fmt: skip
        assert any(m.startswith("Fine-tuning job resumed from checkpoint step-") for m in log), log
        steps = [int(m.split()[1].split("/")[0]) for m in log if m.startswith("Step ")]
        assert steps == list(range(1, 101)), "every step exactly once across the kill"
        checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
        card = client.models.retrieve(checkpoint.fine_tuned_model_checkpoint)  # a checkpoint is a model
        assert card.id == checkpoint.fine_tuned_model_checkpoint and card.owned_by
    finally:
        server.stop()


def test_pause_and_resume(home, tmp_path):
    server = ServerProcess(home).wait_ready()
    try:
        client = server.client()
        # 300 steps: the 100 of 5 epochs (~25 a second) twice ended before the pause reached the
        # training process (the job completed, and the wait for "paused" timed out)
        epochs = 15
        job = long_job(client, tmp_path, epochs)
        wait_for(lambda: any(m.startswith("Step ") for m in events(client, job.id)), 120, what="training")
        paused = client.fine_tuning.jobs.pause(job.id)
        assert paused.status == "paused"
        # a pause lands after the current step (usually ~3 s; the limits leave room for a busy host)
        wait_for(lambda: "Fine-tuning job paused at its latest checkpoint" in events(client, job.id), 300)
        steps_at_pause = sum(m.startswith("Step ") for m in events(client, job.id))
        assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
        resumed = client.fine_tuning.jobs.resume(job.id)
        assert resumed.status == "queued"
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "succeeded" and j, 600)
        log = events(client, job.id)
        steps = [int(m.split()[1].split("/")[0]) for m in log if m.startswith("Step ")]
        assert steps == list(range(1, 20 * epochs + 1)), "every step exactly once across the pause"
        assert steps_at_pause < 20 * epochs and done.fine_tuned_model
    finally:
        server.stop()


def test_api_key_and_upload_limit(home, tmp_path):
    server = ServerProcess(home, env={"TUNELOOP_API_KEY": "sekret", "TUNELOOP_MAX_UPLOAD_BYTES": "1000"}).wait_ready()
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        client = server.client("sekret")
        assert any(m.id == "tiny-llama" for m in client.models.list())
        with pytest.raises(openai.APIStatusError) as err:
            client.files.create(file=("big.jsonl", b"x" * 5000), purpose="fine-tune")
        assert err.value.status_code == 413
        assert client.files.list().data == []  # nothing half-stored
    finally:
        server.stop()


def test_training_child_runs_at_lower_priority_with_the_configured_threads(home, tmp_path):
    env = {"TUNELOOP_NUM_THREADS": "1", "TUNELOOP_TRAIN_NICE": "7"}
    server = ServerProcess(home, env=env).wait_ready()
    try:
        client = server.client()
        job = long_job(client, tmp_path, epochs=1)

        def threads_event():
            return next(
                (e for e in client.fine_tuning.jobs.list_events(job.id) if e.message.startswith("Training on")), None
            )

        line = wait_for(threads_event, 120, what="the threads event")
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert line.message == f"Training on 1 CPU thread at OS priority nice {base + 7}"
        data = line.data
        assert data["threads"] == 1 and data["nice"] == base + 7 and data["pid"] != server.process.pid
        try:  # seen from outside while it trains: field 19 of /proc/<pid>/stat is the niceness
            stat = Path(f"/proc/{data['pid']}/stat").read_text().rsplit(")", 1)[1].split()
            assert int(stat[16]) == base + 7 and os.getsid(data["pid"]) == data["pid"]  # a session of its own
            autogroup = Path(f"/proc/{data['pid']}/autogroup")  # whose weight it lowered too
            assert not autogroup.exists() or autogroup.read_text().split()[-1] == str(base + 7)
        except (FileNotFoundError, ProcessLookupError):
            pass  # already finished on a fast machine
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "succeeded" and j, 240)
        assert done.fine_tuned_model
    finally:
        server.stop()
