"""``tuneloop train`` (the command function, registered on a Typer app here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def write_words(path: Path, copies: int = 1) -> Path:
    words = ["yes", "no", "maybe", "never", "always", "often", "seldom", "soon", "later", "now", "then", "here"]
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]} for w in words]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) * copies, encoding="utf-8")
    return path


def start_train_job(tmp_path: Path, model: str, epochs: int) -> subprocess.Popen:
    """``tuneloop train`` as a shell starts a job: the leader of a process group of its own."""
    data = write_words(tmp_path / "train.jsonl", copies=4)
    # Ctrl-C as in a terminal: a background runner (`make test &`) would hand its ignored SIGINT down
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    argv = [sys.executable, "-c", reset, sys.executable, "-m", "tuneloop.cli.main", "train", "--model", model,
            "--train", str(data), "--out", str(tmp_path / "run"), "--epochs", str(epochs),
            "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "TUNELOOP_TRAIN_NICE": "19"}
    return subprocess.Popen(argv, env=env, process_group=0, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def training_child(parent: subprocess.Popen, timeout: float = 60) -> int:
    """The process that trains for ``parent``: its child in a session of its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        if children and os.getsid(int(children[0])) == int(children[0]):
            return int(children[0])
        assert parent.poll() is None, parent.communicate()
        time.sleep(0.05)
    raise AssertionError("no training child")


needs_autogroups = pytest.mark.skipif(
    not os.path.exists("/proc/self/autogroup"), reason="scheduler autogroups (Linux) are what the session is for"
)


@needs_autogroups
def test_a_terminal_job_trains_in_a_session_of_its_own_at_the_lowest_priority(tmp_path: Path, tiny_model: str):
    parent = start_train_job(tmp_path, tiny_model, epochs=3)
    child = training_child(parent)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child}/autogroup").read_text().split()[-1] != "19":  # set_priority lowers it at once
        assert time.monotonic() < deadline and parent.poll() is None, parent.communicate()
        time.sleep(0.05)
    assert os.getpgid(parent.pid) == parent.pid  # the parent stays in its group, where Ctrl-C lands
    out, err = parent.communicate(timeout=240)
    assert parent.returncode == 0, err
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file() and "adapter" in out
    assert "loss" in err  # the child's progress bar, on the same stderr


@needs_autogroups
def test_ctrl_c_on_a_terminal_job_reaches_the_training_child(tmp_path: Path, tiny_model: str):
    parent = start_train_job(tmp_path, tiny_model, epochs=50)
    child = training_child(parent)
    time.sleep(1.0)
    os.killpg(parent.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the job's whole process group
    parent.communicate(timeout=60)
    assert parent.returncode != 0
    assert not Path(f"/proc/{child}").exists()  # ended and reaped, not left training in its session
