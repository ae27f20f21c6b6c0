"""The service on PostgreSQL: one API server and two workers on the same database share the jobs."""

from __future__ import annotations

import pytest

from tuneloop.config import Settings
from tuneloop.models import Catalog

from helpers import ServerProcess, chat_jsonl, wait_for


@pytest.fixture
def home(tmp_path, tiny_model_dir):
    home = tmp_path / "home"
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    return home


def test_two_workers_on_postgres_run_each_job_once(home, tmp_path, postgres_url):
    env = {"TUNELOOP_DATABASE_URL": postgres_url}
    server = ServerProcess(home, "--no-worker", env=env).wait_ready()
    workers = [ServerProcess(home, env=env, command="worker") for _ in range(2)]
    try:
        client = server.client()
        with open(chat_jsonl(tmp_path / "train.jsonl", 10), "rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        jobs = [
            client.fine_tuning.jobs.create(
                model="tiny-llama", training_file=training.id, suffix=f"pg{i}",
                hyperparameters={"n_epochs": 1, "batch_size": 5},
            )
            for i in range(3)
        ]  # fmt: skip

        def all_finished():
            now = [client.fine_tuning.jobs.retrieve(j.id) for j in jobs]
            return all(j.status in ("succeeded", "failed", "cancelled") for j in now) and now

        finished = wait_for(all_finished, 240, what="three jobs on two workers")
        assert [j.status for j in finished] == ["succeeded"] * 3, [j.error for j in finished]
        for job in finished:
            messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
            assert messages.count("Fine-tuning job started") == 1, messages
        assert {m.id for m in client.models.list()} >= {j.fine_tuned_model for j in finished}
        reply = client.chat.completions.create(
            model=finished[0].fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage.completion_tokens >= 1
    finally:
        for p in (*workers, server):
            p.stop()
