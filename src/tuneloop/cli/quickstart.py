"""``tuneloop quickstart``: the whole loop on the bundled model."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop.config import get_settings
from tuneloop.quickstart.run import run_quickstart


def quickstart(
    workdir: Path = typer.Option(Path("quickstart-run"), "--workdir", help="Folder for data, logs and the report."),
    n_train: int = typer.Option(240, "--train-examples", help="Generated training examples."),
    n_valid: int = typer.Option(60, "--valid-examples", help="Generated held-out examples."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", help="Base model to fine-tune."),
) -> None:
    """Generate a task, validate it, fine-tune through the API, evaluate, and chat with the result."""
    run_quickstart(get_settings(), workdir.resolve(), n_train, n_valid, model)
