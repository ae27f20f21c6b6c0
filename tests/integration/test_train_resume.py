"""Checkpoints, clean stops and exact resume (after a stop or a crash) on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tuneloop.train import TrainCallbacks, TrainConfig, train
from tuneloop.train.metrics import MetricsCSV


def write_data(path: Path, n: int = 16) -> Path:
    rng = random.Random(5)
    rows = []
    for _ in range(n):
        text = " ".join(rng.choice(["find", "a", "song", "rain", "today", "book", "dinner"]) for _ in range(6))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer with one word."},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": rng.choice(["Music", "Weather", "Food"])},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, model: str, name: str, **kw) -> TrainConfig:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_data(data)
    settings = {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate_multiplier": 20.0,
        "lora_r": 4,
        "lora_dropout": 0.1,  # dropout draws random numbers: resume must reproduce them too
        "keep_checkpoints": 2,
    }
    return TrainConfig(model=model, training_file=data, output_dir=tmp_path / name, **{**settings, **kw})


def losses(path: Path) -> list[float]:
    return [r["train_loss"] for r in MetricsCSV(path).read()]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


class Crash(Exception):
    """Stands in for the process being killed."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The reference run, once for this module (in a home of its own)."""
    from tuneloop.config import Settings
    from tuneloop.models import Catalog

    tmp = tmp_path_factory.mktemp("uninterrupted")
    Catalog(Settings(home=tmp / "home")).add("tiny-llama", tiny_model_dir)
    checkpoints: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELOOP_HOME", str(tmp / "home"))
        result = train(config(tmp, "tiny-llama", "full-run"), TrainCallbacks(on_checkpoint=checkpoints.append))
    assert result.total_steps == 6 and not result.stopped
    assert [c.step for c in checkpoints] == [2, 4, 6]  # one per epoch
    assert [p.name for p in result.checkpoints] == ["step-4", "step-6"]  # keep_checkpoints=2
    return result


def test_stop_then_resume_reproduces_the_uninterrupted_run(tmp_path: Path, tiny_model: str, uninterrupted) -> None:
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] == 3  # polled after step 3, mid-epoch 2

    stopped = train(config(tmp_path, tiny_model, "stopped"), should_stop=should_stop)
    assert stopped.stopped and stopped.steps_done == 3 and stopped.weights_path is None
    assert (tmp_path / "stopped" / "checkpoints" / "step-3" / "trainer_state.pt").is_file()
    assert not (tmp_path / "stopped" / "adapter").exists()

    resumed = train(config(tmp_path, tiny_model, "stopped", resume_from="latest"))
    assert not resumed.stopped and resumed.steps_done == 6
    assert losses(resumed.metrics_csv) == pytest.approx(losses(uninterrupted.metrics_csv), abs=1e-6)
    a, b = adapter(uninterrupted.weights_path), adapter(resumed.weights_path)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_resume_after_a_crash_continues_from_the_last_epoch_checkpoint(
    tmp_path: Path, tiny_model: str, uninterrupted
) -> None:
    def crash_at_step_3(m) -> None:
        if m.step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(config(tmp_path, tiny_model, "crashed"), TrainCallbacks(on_step=crash_at_step_3))
    out = tmp_path / "crashed"
    assert [r["step"] for r in MetricsCSV(out / "metrics.csv").read()] == [1, 2, 3]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]

    resumed = train(config(tmp_path, tiny_model, "crashed", resume_from="latest"))
    rows = MetricsCSV(resumed.metrics_csv).read()
    assert [r["step"] for r in rows] == list(range(1, 7))  # step 3 recomputed, not duplicated
    assert losses(resumed.metrics_csv) == pytest.approx(losses(uninterrupted.metrics_csv), abs=1e-6)
    assert resumed.trained_tokens == uninterrupted.trained_tokens


def test_resume_rejects_a_checkpoint_of_another_run(tmp_path: Path, tiny_model: str, uninterrupted) -> None:
    from tuneloop.errors import TuneloopError

    step4 = uninterrupted.output_dir / "checkpoints" / "step-4"
    with pytest.raises(TuneloopError, match="different run"):
        train(config(tmp_path, tiny_model, "other", n_epochs=4, resume_from=step4))
