"""Resolution of "auto" hyperparameters, the metrics CSV and checkpoint bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tuneloop.data.estimate import AnswerProfile, auto_epochs
from tuneloop.train import checkpoint as ckpt
from tuneloop.train.config import (
    TrainConfig,
    resolve_batch_size,
    resolve_hyperparameters,
    resolve_learning_rate_multiplier,
)
from tuneloop.train.metrics import MetricsCSV, StepMetrics


def config(**kw) -> TrainConfig:
    return TrainConfig(model="m", training_file=Path("t.jsonl"), output_dir=Path("out"), **kw)


def test_every_field_has_a_help_string() -> None:
    assert all(f.description for f in TrainConfig.model_fields.values())


def test_auto_values_are_resolved_with_their_rules() -> None:
    hp = resolve_hyperparameters(config(), n_examples=256, context_length=8192)
    assert hp.n_epochs == auto_epochs(256)[0] == 3
    assert hp.batch_size == 8
    assert hp.learning_rate == pytest.approx(1e-4 * hp.learning_rate_multiplier)
    assert hp.max_length == 2048
    assert set(hp.rules) == {"n_epochs", "batch_size", "learning_rate_multiplier", "max_length"}
    assert all(hp.rules.values())


def test_label_sets_with_few_examples_per_label_get_more_epochs() -> None:
    """CLINC150 at 8 per intent: 8 epochs (each label seen ~64 times); at 16: 4; Snips-like data keeps 3."""
    assert auto_epochs(1200, 150)[0] == 8
    assert auto_epochs(2400, 150)[0] == 4
    assert auto_epochs(512, 7)[0] == 3  # 73 examples per label: the default
    assert auto_epochs(256, 7) == auto_epochs(256, None)  # benchmarks/snips_eval.py resolves as before the rule
    assert auto_epochs(1200, None)[0] == 3  # free text: OpenAI's rule
    assert auto_epochs(300, 150)[0] == 10  # at most 10
    assert auto_epochs(20, 10)[0] == 5  # tiny files keep OpenAI's rule (100 // 20)
    epochs, rule = auto_epochs(1200, 150)
    assert "150 labels" in rule and "8.0 per label" in rule
    hp = resolve_hyperparameters(config(), n_examples=1200, context_length=8192, n_labels=150)
    assert hp.n_epochs == 8 and hp.rules["n_epochs"] == rule


def test_answer_profile_tells_labels_from_free_text() -> None:
    labels = AnswerProfile()
    for answer in ["book", "cancel", "book", " cancel\n"]:
        labels.add(answer)
    assert labels.n_labels == 2
    unique = AnswerProfile()
    for answer in ["a", "b", "c"]:
        unique.add(answer)
    assert unique.n_labels is None  # no label repeats: not a label set
    free = AnswerProfile()
    for answer in ["yes", "yes", "a long answer " * 10]:
        free.add(answer)
    assert free.n_labels is None
    calls = AnswerProfile()
    for answer in ["x", "x", None]:  # None: an answer that is a tool call
        calls.add(answer)
    assert calls.n_labels is None


def test_given_values_are_kept() -> None:
    hp = resolve_hyperparameters(
        config(n_epochs=2, batch_size=3, learning_rate_multiplier=0.5, max_length=99999, method="full"), 50, 1024
    )
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier, hp.max_length) == (2, 3, 0.5, 1024)
    assert hp.learning_rate == pytest.approx(0.5e-5)
    assert hp.rules["n_epochs"] == "given"


def test_auto_batch_size_grows_with_the_data_within_bounds() -> None:
    sizes = [resolve_batch_size(n)[0] for n in (10, 100, 256, 1000, 100_000)]
    assert sizes == sorted(sizes)
    assert sizes[0] >= 1 and sizes[-1] <= 32


def test_auto_learning_rate_follows_the_snips_sweep() -> None:
    """8 at batch 4 and 16 at batch 16 were the best multipliers measured; sqrt scaling between, capped."""
    mults = {bs: resolve_learning_rate_multiplier(bs, "lora")[0] for bs in (4, 8, 16, 32)}
    assert mults[4] == 8.0 and mults[16] == 16.0 and mults[32] == 16.0
    assert mults[8] == pytest.approx(8 * 2**0.5, abs=1e-3)
    assert resolve_learning_rate_multiplier(8, "full")[0] == 1.0


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        config(n_epochs=0)
    with pytest.raises(ValidationError):
        config(learning_rate_multiplier=-1.0)
    with pytest.raises(ValidationError):
        config(method="qlora")


def metrics(step: int, loss: float) -> StepMetrics:
    return StepMetrics(
        step=step,
        total_steps=5,
        epoch=1,
        train_loss=loss,
        train_mean_token_accuracy=0.5,
        learning_rate=1e-4,
        trained_tokens=10 * step,
        tokens_per_second=1.0,
        elapsed_seconds=float(step),
    )


def test_metrics_csv_has_openai_columns_and_is_cut_back_on_resume(tmp_path: Path) -> None:
    csv = MetricsCSV(tmp_path / "metrics.csv")
    csv.start(keep_until_step=0)
    for step in range(1, 5):
        csv.append(metrics(step, 1.0 / step))
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy")
    csv.start(keep_until_step=2)  # a run resumed from step 2 rewrites what came after
    rows = csv.read()
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] == pytest.approx(0.5)
    assert rows[1]["valid_loss"] is None


def test_checkpoints_are_atomic_and_pruned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (3, 6, 9, 12):
        ckpt.write_checkpoint(
            root, step, lambda d: (d / "w.bin").write_bytes(b"x"), {"step": step, "t": torch.ones(2)}, {}, keep=3
        )
    (root / ".tmp-step-15").mkdir()  # a checkpoint being written when the process was killed
    (root / "step-15").mkdir()  # incomplete: no trainer state
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-6", "step-9", "step-12"]
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None and ckpt.read_trainer_state(latest)["step"] == 12


def test_a_killed_writers_leftovers_go_when_that_checkpoint_is_written_again(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    leftover = root / ".step-3.99999999.abcd1234.tmp"  # atomic_path's temporary, left by a killed process
    leftover.mkdir(parents=True)
    (root / ".step-30.999.abcd1234.tmp").mkdir()  # another step's: kept
    state = {ckpt.STEP_KEY: 3, ckpt.RNG_KEY: ckpt.rng_state()}
    path = ckpt.write_checkpoint(root, 3, lambda d: (d / "w.bin").write_bytes(b"x"), state, {ckpt.STEP_KEY: 3}, keep=3)
    assert path == root / "step-3" and not leftover.exists() and (root / ".step-30.999.abcd1234.tmp").exists()
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "trainer_state.pt", "w.bin"]
    assert ckpt.read_trainer_state(path)[ckpt.STEP_KEY] == 3 and ckpt.read_meta(path) == {"step": 3}
