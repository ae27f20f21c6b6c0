"""Load a catalog model's tokenizer and weights."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import InvalidModelError
from tuneloop.models.catalog import Catalog, ModelEntry

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


_IMPORT_LOCK = threading.Lock()


def auto_classes() -> tuple[Any, Any]:
    """transformers' ``AutoTokenizer`` and ``AutoModelForCausalLM``.

    Imported under a lock: transformers' lazy module raises ImportError when two threads trigger
    the same lazy import at once (the server validates several new jobs in parallel threads).
    """
    with _IMPORT_LOCK:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoTokenizer, AutoModelForCausalLM


def configure_torch_threads(num_threads: int | None = None) -> None:
    """Use every available core for intra-op parallelism (torch's default can be lower)."""
    import torch

    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(num_threads or 1)))


def load_tokenizer(entry: ModelEntry) -> PreTrainedTokenizerBase:
    """Load the (fast) tokenizer of a ready catalog entry."""
    AutoTokenizer, _ = auto_classes()

    if entry.path is None:
        raise InvalidModelError(f"model '{entry.name}' is not converted yet")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(entry.path))
    except Exception as exc:
        raise InvalidModelError(f"{entry.path}: cannot load tokenizer ({exc})") from exc
    tokenizer.model_max_length = entry.context_length
    if tokenizer.chat_template is None and entry.chat_template:
        tokenizer.chat_template = entry.chat_template
    return tokenizer


def load_model(
    catalog: Catalog, name: str, device: str | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelEntry]:
    """Load model ``name`` (converting it first if needed) in eval mode on ``device``.

    float32 is the default: CPUs without native bf16 run bf16 matmuls hundreds of times slower.
    """
    import torch

    _, AutoModelForCausalLM = auto_classes()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    entry = catalog.ensure_ready(catalog.get(name))
    device = device or catalog.settings.resolved_device()
    if device == "cpu":
        configure_torch_threads(catalog.settings.num_threads)
    tokenizer = load_tokenizer(entry)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(entry.path), dtype=dtype or torch.float32)
    except Exception as exc:
        raise InvalidModelError(f"{entry.path}: cannot load model weights ({exc})") from exc
    model.to(device)
    model.eval()
    return model, tokenizer, entry


def load_full_model(
    path: Path, entry: ModelEntry, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fully fine-tuned model's weights (float32, eval mode) from ``path`` and its tokenizer (its own,
    else its base model ``entry``'s)."""
    import torch

    _, AutoModelForCausalLM = auto_classes()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    tokenizer_entry = entry.model_copy(update={"path": path if (path / "tokenizer.json").is_file() else entry.path})
    return model, load_tokenizer(tokenizer_entry)
