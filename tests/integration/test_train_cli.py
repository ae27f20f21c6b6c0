"""``tuneloop train`` (the command function, registered on a Typer app here)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from tuneloop.cli import train as train_cli


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("train")(train_cli.train)
    a.command("noop")(lambda: None)  # a second command keeps "train" a subcommand, as in the real CLI
    return a


def test_train_command_writes_an_adapter_and_shows_progress(tmp_path: Path, tiny_model: str) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {w}"},
                {"role": "assistant", "content": w},
            ]
        }
        for w in ["yes", "no", "maybe", "never", "always", "often", "seldom", "soon", "later", "now", "then", "here"]
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model, "--train", str(data), "--out", str(out)]
    result = CliRunner().invoke(app(), [*args, "--epochs", "2", "--batch-size", "4", "--lr-multiplier", "auto"])
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert str(out / "adapter") in result.stdout
    assert "loss" in result.stderr and "tok/s" in result.stderr and "6/6" in result.stderr  # the progress bar
    resolved = json.loads((out / "resolved_config.json").read_text())["hyperparameters"]
    assert (resolved["n_epochs"], resolved["batch_size"]) == (2, 4)
    assert resolved["rules"]["learning_rate_multiplier"] != "given"


def test_train_command_rejects_bad_values(tmp_path: Path, tiny_model: str) -> None:
    args = ["train", "--model", tiny_model, "--train", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app(), [*args, "--epochs", "many"])
    assert result.exit_code != 0
    assert "auto" in result.output
