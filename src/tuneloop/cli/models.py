"""``tuneloop models``: list, show, add and remove base models; export any model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.config import get_settings
from tuneloop.models import Catalog, ModelEntry

app = typer.Typer(help="The base-model catalog.", no_args_is_help=True)
console = Console()


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _status(entry: ModelEntry) -> str:
    return "ready" if entry.ready else "converts on first use"


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models in the catalog."""
    entries = Catalog(get_settings()).entries()
    if as_json:
        rows = [e.model_dump(mode="json", exclude={"chat_template"}) | {"ready": e.ready} for e in entries]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "architecture", "parameters", "context", "status")
    table.columns[0].no_wrap = True
    for e in entries:
        table.add_row(e.name, e.architecture, _params(e.parameter_count), str(e.context_length), _status(e))
    console.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Model name.")) -> None:
    """Show one model: where it lives, its size, context length and chat template."""
    e = Catalog(get_settings()).get(name)
    typer.echo(f"name:          {e.name}")
    typer.echo(f"architecture:  {e.architecture}")
    typer.echo(f"parameters:    {e.parameter_count:,} ({_params(e.parameter_count)})")
    typer.echo(f"context:       {e.context_length} tokens")
    typer.echo(f"source:        {e.source} ({e.source_kind})")
    typer.echo(f"weights:       {e.path if e.ready else '(' + _status(e) + ')'}")
    typer.echo("chat template:")
    typer.echo(e.chat_template or "  (none; ChatML is used)")


@app.command("add")
def add(
    name: str = typer.Argument(..., help="Name to register the model under."),
    path: Path = typer.Argument(..., help="A Hugging Face model folder or a .gguf file."),
) -> None:
    """Register a local model (Llama, Qwen2, Mistral families). A GGUF is converted once."""
    e = Catalog(get_settings()).add(name, path)
    typer.echo(f"added {e.name}: {e.architecture}, {_params(e.parameter_count)} parameters, context {e.context_length}")


@app.command("remove")
def remove(name: str = typer.Argument(..., help="Model name.")) -> None:
    """Remove a registered model from the catalog (its files are left alone)."""
    Catalog(get_settings()).remove(name)
    typer.echo(f"removed {name}")


@app.command("export")
def export(
    model: str = typer.Argument(..., help="A base model, fine-tuned model (ft:…) or checkpoint id."),
    output: Path = typer.Option(..., "--output", "-o", help="The folder to write (must not exist)."),
    fmt: str = typer.Option(
        "merged", "--format", help="merged: a Hugging Face folder, LoRA merged into the base; gguf: GGUF + Modelfile."
    ),
    quantize: str = typer.Option(
        "f16", "--quantize", help="GGUF weights: f16, q8_0, q4_0 or q4_k_m (llama.cpp's Q4_K_M mix of Q4_K and Q6_K)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists (once the new one is whole)."),
) -> None:
    """Export a model: a Hugging Face folder (weights, tokenizer, chat template) or a GGUF for llama.cpp/Ollama."""
    # imported here: the job store loads SQLAlchemy and the export torch, which the other commands skip
    from tuneloop.data.prompts import constant_system_prompt
    from tuneloop.engine.model_pool import ModelPool
    from tuneloop.jobs.lineage import training_file_of
    from tuneloop.models.export import export_model
    from tuneloop.store.db import make_engine
    from tuneloop.store.files import FileStore
    from tuneloop.store.jobs import JobStore

    settings = get_settings()
    catalog, engine = Catalog(settings), make_engine(settings)
    jobs = JobStore(engine)
    resolved = ModelPool(catalog, jobs).resolve(model)
    data = training_file_of(jobs, FileStore(engine, settings.home), model)  # its one system prompt goes in Modelfile
    system = constant_system_prompt(data) if data is not None and fmt == "gguf" else None
    files = export_model(catalog, resolved.base, resolved.kind, resolved.path, output, fmt=fmt,  # type: ignore[arg-type]
                         quantize=quantize, name=model, force=force, system=system)  # fmt: skip
    what = {"base": "base model", "lora": "LoRA adapter merged into " + resolved.base, "full": "full fine-tune"}
    typer.echo(f"exported {model} ({what[resolved.kind]}) to {output}: {', '.join(f.name for f in files)}")
