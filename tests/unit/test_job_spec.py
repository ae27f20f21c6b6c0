"""``JobSpec``: stored in the job's columns, read back whole, and turned into the run's ``TrainConfig``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneloop.config import get_settings
from tuneloop.jobs.spec import JobSpec
from tuneloop.store.db import make_engine
from tuneloop.store.files import FileStore
from tuneloop.store.jobs import JobStore
from tuneloop.train.hyperparameters import BOUNDS, HyperparameterError, Hyperparameters, check_hyperparameter


def test_a_spec_survives_the_store_and_becomes_the_train_config(tmp_path: Path) -> None:
    settings = get_settings()
    engine = make_engine(settings)
    files, jobs = FileStore(engine, settings.home), JobStore(engine)
    training = files.create_bytes("train.jsonl", "fine-tune", b"{}\n")
    spec = JobSpec(
        model="tiny-llama",
        training_file=training.id,
        method="full",
        hyperparameters=Hyperparameters(n_epochs=3, learning_rate_multiplier=0.5),
        suffix="demo",
        seed=7,
        metadata={"team": "a"},
    )
    job = jobs.create(**spec.columns())
    assert JobSpec.of(job) == spec
    assert job.hyperparameters == {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5}

    config = JobSpec.of(job).train_config(settings, files, tmp_path / "out", resume=True)
    assert (config.model, config.method, config.seed, config.resume_from) == ("tiny-llama", "full", 7, "latest")
    assert (config.n_epochs, config.batch_size, config.learning_rate_multiplier) == (3, "auto", 0.5)
    assert config.training_file == files.path(training) and config.validation_file is None
    assert config.output_dir == tmp_path / "out" and config.device is None  # TUNELOOP_DEVICE=auto
    assert spec.base_model == "tiny-llama" and config.start_from is None

    # SFT then DPO: a job that starts from a fine-tuned model trains its base with those weights
    parent = "ft:tiny-llama:local:demo:abc"
    jobs.add_model(parent, "tiny-llama", job.id, "lora", str(tmp_path / "adapter"))
    weights = jobs.trained_weights(parent)
    assert (weights.base, weights.kind, weights.job_id) == ("tiny-llama", "lora", job.id)
    child = jobs.create(**spec.model_copy(update={"model": parent, "objective": "dpo"}).columns())
    assert (child.model, child.base) == (parent, "tiny-llama") and JobSpec.of(child).base_model == "tiny-llama"
    config = JobSpec.of(child).train_config(settings, files, tmp_path / "dpo", resume=False, start_from=weights.path)
    assert (config.model, config.start_from, config.objective) == ("tiny-llama", tmp_path / "adapter", "dpo")
    assert jobs.trained_weights("tiny-llama") is None and jobs.trained_weights(f"{parent}:ckpt-step-1") is None
    engine.dispose()


def test_a_job_stored_with_no_hyperparameters_is_all_auto() -> None:
    engine = make_engine(get_settings())
    job = JobStore(engine).create(
        model="m", training_file="file-x", validation_file=None, hyperparameters={}, method="lora",
        suffix=None, seed=1, metadata=None,
    )  # fmt: skip
    assert JobSpec.of(job).hyperparameters == Hyperparameters()
    engine.dispose()


def test_one_check_for_every_hyperparameter() -> None:
    assert check_hyperparameter("n_epochs", "3") == 3 and check_hyperparameter("n_epochs", 3.0) == 3
    assert check_hyperparameter("learning_rate_multiplier", 2) == 2.0
    for name, bad in [("n_epochs", 2.5), ("n_epochs", True), ("batch_size", None), ("learning_rate_multiplier", 101)]:
        with pytest.raises(HyperparameterError) as err:
            check_hyperparameter(name, bad)
        assert err.value.name == name and str(err.value).startswith(f"Invalid value for '{name}': must be 'auto' or")
    with pytest.raises(HyperparameterError, match="'batch_size'"):
        Hyperparameters.checked({"n_epochs": 50, "batch_size": 0})
    with pytest.raises(ValidationError):
        JobSpec(model="m", training_file="f", seed=1, suffix="")
    assert set(BOUNDS) == set(Hyperparameters.model_fields)


def test_a_dpo_spec_keeps_its_type_and_beta_and_shows_them_as_openai_does(tmp_path: Path) -> None:
    settings = get_settings()
    engine = make_engine(settings)
    files, jobs = FileStore(engine, settings.home), JobStore(engine)
    training = files.create_bytes("pairs.jsonl", "fine-tune", b"{}\n")
    spec = JobSpec(model="tiny-llama", training_file=training.id, objective="dpo", seed=3,
                   hyperparameters=Hyperparameters(n_epochs=2, beta=0.25))  # fmt: skip
    job = jobs.create(**spec.columns())
    assert JobSpec.of(job) == spec and job.objective == "dpo"
    stored = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.25}
    assert job.hyperparameters == stored
    shown = job.to_openai("local")
    assert shown["method"] == {"type": "dpo", "dpo": {"hyperparameters": stored}}
    assert "beta" not in shown["hyperparameters"]  # the legacy field has the supervised keys only
    config = JobSpec.of(job).train_config(settings, files, tmp_path / "out", resume=False)
    assert (config.objective, config.beta, config.n_epochs) == ("dpo", 0.25, 2)
    supervised = jobs.create(**JobSpec(model="m", training_file=training.id, seed=1).columns())
    assert supervised.objective == "supervised" and supervised.to_openai("local")["method"]["type"] == "supervised"
    with pytest.raises(HyperparameterError, match="'beta'"):
        Hyperparameters.checked({"beta": 0})
    engine.dispose()
