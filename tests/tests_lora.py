"""Random LoRA adapters on the tiny model, for serving tests."""

from __future__ import annotations

from pathlib import Path


def make_adapters(model_dir: Path, out: Path, count: int) -> list[Path]:
    """Save ``count`` PEFT LoRA adapters with random (non-zero) weights; return their folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for i in range(count):
        torch.manual_seed(100 + i)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(base, config)
        folder = out / f"adapter-{i}"
        model.save_pretrained(folder)
        folders.append(folder)
    return folders
