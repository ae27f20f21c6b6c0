"""``tuneloop files``: upload, list, get, delete and download files through the server's Files API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from tuneloop.cli.client import DEFAULT_BASE_URL, BaseUrl, connect, output_console, table, timestamp
from tuneloop.errors import TuneloopError
from tuneloop.fileio import AtomicWriter

app = typer.Typer(help="Training files on the tuneloop server (OpenAI's Files API).", no_args_is_help=True)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@app.command("upload")
def upload(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="File to upload (.jsonl)."),
    purpose: str = typer.Option("fine-tune", "--purpose", help="What the file is for."),
    as_json: bool = typer.Option(False, "--json", help="Print the file object as JSON."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Upload a file; prints its id."""
    with connect(base_url) as client:
        f = client.files.create(file=file, purpose=purpose)
    if as_json:
        _echo_json(f.model_dump())
        return
    typer.echo(f"uploaded {f.filename} as {f.id} ({f.bytes:,} bytes, purpose {f.purpose})")


@app.command("list")
def list_files(
    purpose: str | None = typer.Option(None, "--purpose", help="Only files with this purpose."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many files (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """List uploaded files, newest first."""
    query: dict[str, Any] = {"purpose": purpose, "limit": limit}
    with connect(base_url) as client:
        files = client.files.list(**{k: v for k, v in query.items() if v is not None}).data
    if as_json:
        _echo_json([f.model_dump() for f in files])
        return
    rows = table("id", "filename", "bytes", "purpose", "status", "created", ids=("filename",))
    rows.columns[2].justify = "right"
    for f in files:
        rows.add_row(f.id, f.filename, f"{f.bytes:,}", f.purpose, f.status or "-", timestamp(f.created_at, False))
    output_console().print(rows)


@app.command("get")
def get(
    file_id: str = typer.Argument(..., help="File id (file-...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the file object as JSON."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Show one file's metadata."""
    with connect(base_url) as client:
        f = client.files.retrieve(file_id)
    if as_json:
        _echo_json(f.model_dump())
        return
    typer.echo(f"id:        {f.id}")
    typer.echo(f"filename:  {f.filename}")
    typer.echo(f"bytes:     {f.bytes:,}")
    typer.echo(f"purpose:   {f.purpose}")
    typer.echo(f"status:    {f.status or '-'}")
    typer.echo(f"created:   {timestamp(f.created_at)}")


@app.command("delete")
def delete(
    file_id: str = typer.Argument(..., help="File id (file-...)."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Delete a file."""
    with connect(base_url) as client:
        client.files.delete(file_id)
    typer.echo(f"deleted {file_id}")


@app.command("content")
def content(
    file_id: str = typer.Argument(..., help="File id (file-...)."),
    output: Path | None = typer.Option(None, "-o", "--output", dir_okay=False, help="Write here instead of stdout."),
    base_url: BaseUrl = DEFAULT_BASE_URL,
) -> None:
    """Download a file's bytes to stdout or to a file (written completely or not at all)."""
    if output is not None and not output.resolve().parent.is_dir():
        raise TuneloopError(f"{output}: folder {output.resolve().parent} does not exist")
    with connect(base_url) as client, client.files.with_streaming_response.content(file_id) as response:
        if output is None:
            sys.stdout.flush()
            for chunk in response.iter_bytes():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        with AtomicWriter(output) as out:
            for chunk in response.iter_bytes():
                out.file.write(chunk)
    typer.echo(f"wrote {output.stat().st_size:,} bytes to {output}", err=True)
