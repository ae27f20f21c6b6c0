"""Files, fine-tuning jobs and models over HTTP, driven only by the official `openai` client."""

from __future__ import annotations

import openai
import pytest

from helpers import chat_jsonl, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


def upload(client, tmp_path, n: int = 12, name: str = "train.jsonl", **kw):
    with open(chat_jsonl(tmp_path / name, n, **kw), "rb") as f:
        return client.files.create(file=f, purpose="fine-tune")


def wait_done(client, job_id: str, timeout: float = 180):
    return wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and j, timeout, what="job end"
    )


def test_full_lifecycle(api_server, tmp_path):
    client = api_server.client()
    training = upload(client, tmp_path)
    assert training.status == "processed" and training.purpose == "fine-tune"
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        suffix="demo",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        metadata={"team": "a"},
    )
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 2
    job = wait_done(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:tiny-llama:local:demo:")
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.batch_size == 4 and job.hyperparameters.learning_rate_multiplier != "auto"

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # auto-paginates 2 at a time
    messages = [e.message for e in reversed(events)]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[1] == f"Validating training file: {training.id}"
    assert "Fine-tuning job started" in messages
    assert messages[-2] == f"New fine-tuned model created: {job.fine_tuned_model}"
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 6 and metrics[0].data["step"] == 6 and metrics[0].data["total_steps"] == 6
    assert metrics[0].message.startswith("Step 6/6: training loss=")
    assert len({e.id for e in events}) == len(events)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"  # as on OpenAI
    assert checkpoints[0].metrics.train_loss is not None

    csv = client.files.content(job.result_files[0]).text
    assert csv.startswith("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy")
    assert len(csv.strip().splitlines()) == 7
    assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"

    models = {m.id: m for m in client.models.list()}
    assert models[job.fine_tuned_model].parent == "tiny-llama"
    assert "tiny-llama" in models and "smollm2-135m-instruct" in models

    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "question?"}], max_tokens=3, temperature=0
    )
    assert reply.usage.completion_tokens <= 3 and reply.choices[0].finish_reason in ("stop", "length")
    ckpt_reply = client.chat.completions.create(
        model=checkpoints[1].fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "q"}], max_tokens=2
    )
    assert ckpt_reply.choices[0].message.role == "assistant"

    listed = client.fine_tuning.jobs.list(metadata={"team": "a"}).data
    assert [j.id for j in listed] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "b"}).data == []

    assert client.models.delete(job.fine_tuned_model).deleted
    assert job.fine_tuned_model not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)


def test_too_few_examples_fails_validation(api_server, tmp_path):
    client = api_server.client()
    small = upload(client, tmp_path, n=5)
    job = wait_done(client, client.fine_tuning.jobs.create(model="tiny-llama", training_file=small.id).id)
    assert job.status == "failed"
    assert job.error.code == "invalid_n_examples" and job.error.param == "training_file"
    assert "5 example(s)" in job.error.message


def test_invalid_line_fails_validation_with_line_number(api_server, tmp_path):
    client = api_server.client()
    path = tmp_path / "bad.jsonl"
    chat_jsonl(path, 12)
    with open(path, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with open(path, "rb") as f:
        bad = client.files.create(file=f, purpose="fine-tune")
    job = wait_done(client, client.fine_tuning.jobs.create(model="tiny-llama", training_file=bad.id).id)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert "line 13: example_missing_assistant_message" in job.error.message


def test_files_api(api_server, tmp_path):
    client = api_server.client()
    a = upload(client, tmp_path, name="a.jsonl")
    b = upload(client, tmp_path, name="b.jsonl", answer="no")
    ids = [f.id for f in client.files.list(purpose="fine-tune")]
    assert ids.index(b.id) < ids.index(a.id)  # newest first
    asc = [f.id for f in client.files.list(purpose="fine-tune", order="asc")]
    assert asc.index(a.id) < asc.index(b.id)
    page = client.files.list(purpose="fine-tune", limit=1)
    assert len(page.data) == 1 and page.has_more
    assert client.files.content(a.id).content == (tmp_path / "a.jsonl").read_bytes()
    assert client.files.delete(a.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(a.id)
    with pytest.raises(openai.BadRequestError, match=r"\.jsonl"):
        client.files.create(file=("notes.txt", b"hello"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("a.jsonl", b"{}"), purpose="nonsense")


def test_error_cases(api_server, tmp_path):
    client = api_server.client()
    training = upload(client, tmp_path)
    with pytest.raises(openai.NotFoundError) as err:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=training.id)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file="file-nope")
    assert err.value.param == "training_file"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, hyperparameters={"n_epochs": 0})
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, suffix="x" * 65)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], logit_bias={"1": 2}
        )
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny-llama", messages=[{"role": "wizard", "content": "hi"}])
    failed = wait_done(client, client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id).id)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(failed.id)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(failed.id)


def test_cancel_running_job(api_server, tmp_path):
    client = api_server.client()
    training = upload(client, tmp_path, n=40)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id, hyperparameters={"n_epochs": 20, "batch_size": 1}
    )
    wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5)), 120)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    import time

    time.sleep(3)  # the worker notices within a poll interval and kills the child
    before = len(list(client.fine_tuning.jobs.list_events(job.id, limit=100)))
    time.sleep(2)
    assert len(list(client.fine_tuning.jobs.list_events(job.id, limit=100))) == before
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
