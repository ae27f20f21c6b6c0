"""A job's hyperparameters have one set of bounds: the HTTP API, ``tuneloop train``, ``tuneloop jobs create``
and ``TrainConfig`` refuse the same values with the same message."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from tuneloop.train import TrainConfig

from helpers import chat_jsonl, run_cli

#: (hyperparameter, CLI option, an out-of-range value, the one message)
CASES = [
    ("n_epochs", "--epochs", 0, "Invalid value for 'n_epochs': must be 'auto' or an integer from 1 to 50"),
    ("n_epochs", "--epochs", 51, "Invalid value for 'n_epochs': must be 'auto' or an integer from 1 to 50"),
    ("batch_size", "--batch-size", 257, "Invalid value for 'batch_size': must be 'auto' or an integer from 1 to 256"),
    (
        "learning_rate_multiplier",
        "--lr-multiplier",
        0,
        "Invalid value for 'learning_rate_multiplier': must be 'auto' or a number greater than 0 and at most 100",
    ),
]


def api_message(call) -> tuple[str, str, str]:
    """(message, param, code) of the 400 that ``call`` raises."""
    with pytest.raises(openai.BadRequestError) as err:
        call()
    body = err.value.body
    assert isinstance(body, dict)
    return body["message"], body["param"], body["code"]


def cli_error(*args: str) -> str:
    """The one line that the real ``tuneloop`` prints when it refuses ``args`` (exit status 2)."""
    result = run_cli(*args, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(("name", "option", "value", "message"), CASES)
def test_out_of_range_values_get_the_same_message_everywhere(
    api_server, tmp_path: Path, name: str, option: str, value: float, message: str
) -> None:
    client = api_server.client()
    with open(chat_jsonl(tmp_path / "train.jsonl", 12), "rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    jobs_before = len(client.fine_tuning.jobs.list(limit=100).data)

    top_level = api_message(
        lambda: client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=training.id, hyperparameters={name: value}
        )
    )
    assert top_level == (message, f"hyperparameters.{name}", "invalid_value")
    method = {"type": "supervised", "supervised": {"hyperparameters": {name: value}}}
    nested = api_message(
        lambda: client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, method=method)
    )
    assert nested == (message, f"method.supervised.hyperparameters.{name}", "invalid_value")

    out, data = tmp_path / "run", str(tmp_path / "train.jsonl")
    train = cli_error("train", "--model", "tiny-llama", "--train", data, "--out", str(out), option, str(value))
    assert train == f"error: {message}" and not out.exists()
    create = ("jobs", "create", "--model", "tiny-llama", "--training-file", training.id, option, str(value))
    assert cli_error(*create, "--base-url", api_server.base_url) == f"error: {message}"
    assert len(client.fine_tuning.jobs.list(limit=100).data) == jobs_before  # nothing was created

    with pytest.raises(ValidationError, match=re.escape(message)):
        TrainConfig(model="m", training_file=Path("t.jsonl"), output_dir=out, **{name: value})


def test_values_at_the_bounds_are_accepted(api_server, tmp_path: Path) -> None:
    client = api_server.client()
    with open(chat_jsonl(tmp_path / "train.jsonl", 12), "rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    highest = {"n_epochs": 50, "batch_size": 256, "learning_rate_multiplier": 100}
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, hyperparameters=highest)
    assert job.hyperparameters.n_epochs == 50 and job.hyperparameters.batch_size == 256
    client.fine_tuning.jobs.cancel(job.id)
    config = TrainConfig(model="m", training_file=Path("t.jsonl"), output_dir=tmp_path, **highest)
    assert (config.n_epochs, config.batch_size, config.learning_rate_multiplier) == (50, 256, 100.0)
