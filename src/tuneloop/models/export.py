"""Export a model out of tuneloop as a standard Hugging Face folder (``tuneloop models export``).

A base model is written as it is loaded; a LoRA fine-tune (or checkpoint) has its adapter merged
into its base model's weights (``W + scale * B @ A``, peft's ``merge_and_unload``); a full
fine-tune is written from its own weights. The folder holds the float32 weights (safetensors), the
tokenizer with the chat template the model was trained with, and ``generation_config.json``; it
appears whole or not at all (written under a temporary name, then renamed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from tuneloop.errors import InvalidModelError, TuneloopError
from tuneloop.fileio import atomic_path
from tuneloop.models.catalog import Catalog
from tuneloop.models.loading import auto_classes, load_model, load_tokenizer

ModelKind = Literal["base", "lora", "full"]
FORMATS = ("merged",)


def export_merged(catalog: Catalog, base: str, kind: ModelKind, path: Path | None, out: Path, *, force: bool = False):
    """Write the model (``base`` itself, or the LoRA adapter / full fine-tune at ``path`` trained from
    ``base``) to ``out`` as a Hugging Face folder; return ``out``. ``out`` must not exist unless
    ``force`` (then it is replaced only once the new folder is complete)."""
    if out.exists() and not force:
        raise TuneloopError(f"{out} already exists (--force replaces it)")
    model, tokenizer, entry = load_model(catalog, base, device="cpu")
    try:
        if kind == "lora":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        elif kind == "full":
            _, AutoModelForCausalLM = auto_classes()
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
            if (path / "tokenizer.json").is_file():
                tokenizer = load_tokenizer(entry.model_copy(update={"path": path}))
    except Exception as exc:  # missing, truncated or damaged files
        raise InvalidModelError(f"the fine-tuned model's files are unreadable ({type(exc).__name__})") from exc
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out, directory=True) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return out
