"""Two CPU processes under torchrun (DDP, gloo) give the same run as one process with the same global batch."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneloop.train import TrainConfig, train
from tuneloop.train.metrics import MetricsCSV


def write_data(path: Path, n: int) -> Path:
    rng = random.Random(11)
    rows = []
    for _ in range(n):
        text = " ".join(
            rng.choice(["play", "jazz", "rain", "in", "rome", "book", "a", "table"]) for _ in range(rng.randint(2, 9))
        )
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer with one label: Music, Weather or Food."},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": rng.choice(["Music", "Weather", "Food"])},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_two_processes_match_one(tmp_path: Path, tiny_model: str) -> None:
    # 17 examples, batch 8: steps of 8, 8 and 1 example (in the last one, one process has nothing to do)
    data = write_data(tmp_path / "train.jsonl", 17)
    valid = write_data(tmp_path / "valid.jsonl", 5)
    common = {
        "model": tiny_model,
        "training_file": data,
        "validation_file": valid,
        "n_epochs": 1,
        "batch_size": 8,
        "learning_rate_multiplier": 20.0,
        "lora_r": 4,
        "lora_dropout": 0.0,
        "micro_batch_size": 3,  # gradient accumulation too, with unequal micro-batch counts per process
        "device": "cpu",
    }
    single = train(TrainConfig(output_dir=tmp_path / "one", **common))

    config = TrainConfig(output_dir=tmp_path / "two", **common)
    config_file = tmp_path / "two.json"
    config_file.write_text(config.model_dump_json(), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "tuneloop.train", str(config_file)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["steps_done"] == 3

    one, two = MetricsCSV(single.metrics_csv).read(), MetricsCSV(tmp_path / "two" / "metrics.csv").read()
    assert len(one) == len(two) == 3
    for key in ("train_loss", "train_accuracy", "valid_loss", "full_valid_loss"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=1e-5, nan_ok=True)
    assert json.loads((tmp_path / "two" / "resolved_config.json").read_text())["world_size"] == 2

    from safetensors.torch import load_file

    a = load_file(str(single.weights_path / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
