"""The ``tuneloop`` command: one sub-app per command group."""

from __future__ import annotations

import sys

import typer

from tuneloop.cli import chat, data, distill, files, jobs, models, serve
from tuneloop.cli import eval as eval_cli
from tuneloop.cli import train as train_cli
from tuneloop.cli.quickstart import quickstart
from tuneloop.errors import TuneloopError

app = typer.Typer(
    name="tuneloop",
    help="Self-hosted fine-tuning for open language models, OpenAI-compatible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.command("quickstart")(quickstart)
app.command("chat")(chat.chat)
app.command("train")(train_cli.train)
app.command("eval")(eval_cli.eval_command)
app.command("serve")(serve.serve)
app.command("worker")(serve.worker)
app.command("distill")(distill.distill)


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one-line messages."""
    try:
        app()
    except TuneloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
