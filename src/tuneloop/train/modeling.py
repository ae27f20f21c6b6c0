"""The model being trained: the base model with LoRA adapters (or all weights trainable), saved as
a standard PEFT adapter folder or a safetensors model folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tuneloop.config import Settings
from tuneloop.errors import TuneloopError
from tuneloop.fileio import write_checksums
from tuneloop.models import Catalog, ModelEntry, load_model
from tuneloop.train.config import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def build_model(
    config: TrainConfig, settings: Settings, device: torch.device
) -> tuple[nn.Module, PreTrainedTokenizerBase, ModelEntry]:
    """Load the base model (from ``settings``' catalog) in float32, with the weights of ``start_from``
    when given, and make it trainable: LoRA adapters (a starting adapter's own), or every weight for ``full``."""
    model, tokenizer, entry = load_model(Catalog(settings), config.model, device="cpu")
    start = starting_weights(config)
    if start == "full":
        load_weights(model, config.start_from, "full")  # type: ignore[arg-type]
    torch.manual_seed(config.seed)  # adapter initialisation
    if start == "lora":
        from peft import LoraConfig, PeftModel

        lora = LoraConfig.from_pretrained(str(config.start_from))  # its rank and targets; this run's dropout
        lora.lora_dropout = config.lora_dropout
        trainable = config.method == "lora"
        model = PeftModel.from_pretrained(model, str(config.start_from), config=lora, is_trainable=trainable)
        if config.method == "full":
            model = model.merge_and_unload()
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif start is None:
        from peft import LoraConfig, get_peft_model  # peft is heavy: loaded only for LoRA runs

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    model.to(device)
    model.train()
    return model, tokenizer, entry


def starting_weights(config: TrainConfig) -> str | None:
    """What ``config.start_from`` holds: ``lora`` (an adapter folder), ``full`` (a model folder) or None."""
    folder = config.start_from
    if folder is None:
        return None
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if not any(folder.glob("*.safetensors")):
        raise TuneloopError(f"{folder}: neither a LoRA adapter folder nor a model folder with *.safetensors weights")
    if config.method == "lora":
        raise TuneloopError(f"{folder}: a full model's weights; a run that starts from them trains every weight (full)")
    return "full"


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates."""
    return [p for p in model.parameters() if p.requires_grad]


def save_weights(model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, method: str) -> None:
    """Write an adapter folder (LoRA: adapter_config.json + adapter_model.safetensors) or a model folder (full)."""
    folder.mkdir(parents=True, exist_ok=True)
    if method == "lora":
        model.save_pretrained(str(folder))
        write_checksums(folder, ["adapter_model.safetensors"])  # the server verifies them whenever it loads them
    else:
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))


def load_weights(model: nn.Module, folder: Path, method: str) -> None:
    """Load the trained weights saved by ``save_weights`` into a model built with the same config."""
    from safetensors.torch import load_file

    if method == "lora":
        from peft import set_peft_model_state_dict  # peft is heavy: loaded only for LoRA runs

        file = folder / "adapter_model.safetensors"
        if not file.is_file():
            raise TuneloopError(f"{folder}: no adapter_model.safetensors to resume from")
        result = set_peft_model_state_dict(model, load_file(str(file)))
        if getattr(result, "unexpected_keys", None):
            raise TuneloopError(f"{file}: adapter does not match the model ({result.unexpected_keys[:3]})")
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TuneloopError(f"{folder}: no *.safetensors weights to resume from")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise TuneloopError(f"{folder}: weights do not match the model (missing {missing[:3]}, extra {unexpected[:3]})")
