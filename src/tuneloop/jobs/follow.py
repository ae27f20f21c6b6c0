"""Follow a fine-tuning job through the ``openai`` client: a progress bar fed by its metrics events,
its other events printed as they arrive, until it finishes or pauses.

Used by ``tuneloop jobs follow`` / ``jobs create --follow`` and by the quickstart; it talks to any
OpenAI-compatible server, so it needs nothing of tuneloop's server side.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

TERMINAL = ("succeeded", "failed", "cancelled")
EVENTS_PAGE = 100  # events fetched per request while following
LEVEL_STYLES = {"warn": "yellow", "warning": "yellow", "error": "red"}
PIPED_WIDTH = 200  # columns for output written to a pipe or file, so ids are never cut


def timestamp(seconds: int | float | None, with_seconds: bool = True) -> str:
    """A unix time as local ``YYYY-MM-DD HH:MM[:SS]`` (``-`` when unset)."""
    fmt = "%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(seconds).strftime(fmt) if seconds else "-"


def plain_console() -> Console:
    """A console on stdout that prints values verbatim (no markup, no ``:emoji:`` codes, which model ids can
    contain); when stdout is not a terminal it is wide enough that rows are not squeezed to 80 columns."""
    plain = {"markup": False, "emoji": False, "highlight": False}
    console = Console(**plain)
    return console if console.is_terminal or os.environ.get("COLUMNS") else Console(width=PIPED_WIDTH, **plain)


def print_event(event: FineTuningJobEvent, out: Console) -> None:
    """One event as ``time  message``, warnings and errors coloured."""
    line = Text.assemble(
        (f"{timestamp(event.created_at)}  ", "dim"), (event.message, LEVEL_STYLES.get(event.level, ""))
    )
    out.print(line, soft_wrap=True)


def new_events(client: OpenAI, job_id: str, seen: set[str], page: int = EVENTS_PAGE) -> list[FineTuningJobEvent]:
    """Events not seen before, oldest first (pages back through the newest-first list until a seen one)."""
    fresh = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=page):
        if event.id in seen:
            break
        fresh.append(event)
    seen.update(e.id for e in fresh)
    return fresh[::-1]


def _show_metrics(progress: Progress, task: TaskID, data: dict[str, Any]) -> None:
    loss = f"loss {data['train_loss']:.4f}" if data.get("train_loss") is not None else ""
    if data.get("valid_loss") is not None:
        loss += f"  valid {data['valid_loss']:.4f}"
    progress.update(task, completed=data.get("step", 0), total=data.get("total_steps"), loss=loss)


def watch(
    client: OpenAI,
    job_id: str,
    interval: float = 2.0,
    *,
    console: Console | None = None,
    events_page: int = EVENTS_PAGE,
) -> FineTuningJob:
    """Poll a job and its events until it is finished or paused, showing progress; returns the last job state.

    ``console`` defaults to :func:`plain_console`; ``events_page`` is how many events one request fetches.
    """
    seen: set[str] = set()
    console = console or plain_console()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("", total=None, loss="")
            while True:
                job = client.fine_tuning.jobs.retrieve(job_id)  # before the events, so none is missed at the end
                for event in new_events(client, job_id, seen, events_page):
                    if event.type == "metrics" and event.data:
                        _show_metrics(progress, task, event.data)
                    else:
                        print_event(event, progress.console)
                progress.update(task, description=job.status)
                if job.status in TERMINAL or job.status == "paused":
                    return job
                time.sleep(interval)
    except KeyboardInterrupt:
        console.print(f"stopped following {job_id}; the job goes on (tuneloop jobs follow {job_id})")
        raise
