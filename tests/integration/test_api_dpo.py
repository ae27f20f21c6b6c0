"""DPO jobs over HTTP with the official `openai` client: ``method={"type": "dpo", ...}``, its metrics and its 400s."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from helpers import chat_jsonl, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


def pair(i: int, good: str = "Yes, gladly.", bad: str = "No.") -> dict:
    return {
        "input": {"messages": [{"role": "system", "content": "Be helpful."},
                               {"role": "user", "content": f"Can you help with task {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }  # fmt: skip


def upload_rows(client, path: Path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune")


def wait_done(client, job_id: str, timeout: float = 180):
    return wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and j, timeout, what="job end"
    )


def bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert isinstance(err.value.body, dict)
    return err.value.body


def test_a_dpo_job_trains_and_reports_preference_metrics(api_server, tmp_path: Path) -> None:
    client = api_server.client()
    training = upload_rows(client, tmp_path / "pairs.jsonl", [pair(i) for i in range(12)])
    validation = upload_rows(client, tmp_path / "valid.jsonl", [pair(100 + i) for i in range(4)])
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        validation_file=validation.id,
        suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2, "batch_size": 4}}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    job = wait_done(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:tiny-llama:local:dpo:") and job.trained_tokens > 0
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    assert job.method.dpo.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e.data for e in reversed(events) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    for m in metrics:
        assert m["train_loss"] > 0 and 0 <= m["train_preference_accuracy"] <= 1
        assert "train_reward_margin" in m and m["train_mean_token_accuracy"] is None
    assert metrics[0]["train_loss"] == pytest.approx(0.6931, abs=2e-3)  # log 2 at the first step
    last = metrics[-1]
    for key in ("valid_preference_accuracy", "valid_reward_margin", "full_valid_preference_accuracy"):
        assert last[key] is not None, key
    messages = [e.message for e in events]
    assert any("preference accuracy=" in m for m in messages)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert checkpoint.metrics.model_extra["train_preference_accuracy"] is not None
    csv = client.files.content(job.result_files[0]).text
    assert "train_reward_margin" in csv.splitlines()[0]
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content is not None  # the DPO adapter serves like any other


def test_reinforcement_and_out_of_range_beta_are_400s(api_server, tmp_path: Path) -> None:
    client = api_server.client()
    training = upload_rows(client, tmp_path / "pairs.jsonl", [pair(i) for i in range(12)])
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    body = bad_request(lambda: client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id, method={"type": "reinforcement"}))  # fmt: skip
    assert body["param"] == "method.type" and "reinforcement" in body["message"]
    for beta in (0, -1, 2.5, "high"):
        method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}}
        body = bad_request(
            lambda m=method: client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, method=m)
        )
        assert (body["param"], body["code"]) == ("method.dpo.hyperparameters.beta", "invalid_value")
        assert body["message"] == "Invalid value for 'beta': must be 'auto' or a number greater than 0 and at most 2"
    body = bad_request(lambda: client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training.id,
        method={"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.1}}}))  # fmt: skip
    assert body["param"] == "method"
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before  # nothing was created


def failed_job(client, training_id: str, method: dict):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training_id, method=method)
    job = wait_done(client, job.id, timeout=60)
    assert job.status == "failed"
    return job.error


def test_a_file_of_the_wrong_format_or_bad_pairs_fails_validation(api_server, tmp_path: Path) -> None:
    client = api_server.client()
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}
    with open(chat_jsonl(tmp_path / "chat.jsonl", 12), "rb") as f:
        chat = client.files.create(file=f, purpose="fine-tune")
    error = failed_job(client, chat.id, dpo)
    assert (error.code, error.param) == ("invalid_training_file", "training_file")
    assert "chat format, but the job is dpo" in error.message and "preferred_output" in error.message

    pairs = upload_rows(client, tmp_path / "pairs.jsonl", [pair(i) for i in range(12)])
    error = failed_job(client, pairs.id, {"type": "supervised"})
    assert error.code == "invalid_training_file" and "preference format, but the job is supervised" in error.message

    rows = [pair(i) for i in range(12)]
    del rows[2]["non_preferred_output"]
    rows[6] = pair(6, good="Same.", bad="Same.")
    bad = upload_rows(client, tmp_path / "bad.jsonl", rows)
    error = failed_job(client, bad.id, dpo)
    assert error.code == "invalid_training_file"
    assert "line 3: missing_preference_output" in error.message
    assert "line 7: identical_preference_outputs" in error.message


def test_sft_then_dpo_starts_jobs_from_a_fine_tuned_model_or_checkpoint(api_server, tmp_path: Path) -> None:
    """OpenAI's SFT-then-DPO order: a job's ``model`` may be a fine-tuned model or checkpoint id; its weights
    are trained further (LoRA) or merged and fully trained (``training_method="full"``), and the new model
    belongs to the same base."""
    client = api_server.client()
    with open(chat_jsonl(tmp_path / "sft.jsonl", 12, answer="Yes, gladly."), "rb") as f:
        chat = client.files.create(file=f, purpose="fine-tune")
    sft = client.fine_tuning.jobs.create(model="tiny-llama", training_file=chat.id, suffix="sft",
                                         hyperparameters={"n_epochs": 2, "batch_size": 4})  # fmt: skip
    sft = wait_done(client, sft.id)
    assert sft.status == "succeeded", sft.error
    checkpoint = client.fine_tuning.jobs.checkpoints.list(sft.id).data[-1].fine_tuned_model_checkpoint
    assert checkpoint.endswith(":ckpt-step-3")
    pairs = upload_rows(client, tmp_path / "pairs.jsonl", [pair(i) for i in range(10)])
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}
    lora = client.fine_tuning.jobs.create(model=sft.fine_tuned_model, training_file=pairs.id, method=dpo, suffix="dpo")
    full = client.fine_tuning.jobs.create(model=checkpoint, training_file=pairs.id, method=dpo, suffix="full",
                                          extra_body={"training_method": "full"})  # fmt: skip
    for job, kind in ((lora, "lora"), (full, "full")):
        job = wait_done(client, job.id)
        assert job.status == "succeeded", job.error
        assert job.model in (sft.fine_tuned_model, checkpoint) and job.model_extra["training_method"] == kind
        assert job.fine_tuned_model.startswith(f"ft:tiny-llama:local:{job.user_provided_suffix}:")
        assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
        answer = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.choices[0].message.content is not None
        if kind == "full":
            full = job

    before = len(client.fine_tuning.jobs.list(limit=100).data)
    body = bad_request(lambda: client.fine_tuning.jobs.create(model=full.fine_tuned_model, training_file=pairs.id,
                                                              method=dpo))  # fmt: skip
    assert body["param"] == "training_method" and "full fine-tune" in body["message"]
    with pytest.raises(openai.NotFoundError) as err:
        client.fine_tuning.jobs.create(model=f"{sft.fine_tuned_model}:ckpt-step-99", training_file=pairs.id)
    assert err.value.body["code"] == "model_not_found"
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before  # nothing was created
