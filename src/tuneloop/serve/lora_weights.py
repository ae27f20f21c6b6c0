"""LoRA adapters as plain tensors, for the engine's multi-adapter batched forward pass.

A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) becomes a map from
(layer index, projection name) to ``(A, B, scale)`` so that ``y += (x @ A.T) @ B.T * scale``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.errors import InvalidModelError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclass
class LoraAdapter:
    """One adapter's low-rank factors per (layer, projection)."""

    name: str
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in self.factors.values())


def load_lora(name: str, folder: Path, device: torch.device | str = "cpu") -> LoraAdapter:
    """Read a PEFT LoRA folder; raise InvalidModelError for anything we cannot serve."""
    from safetensors.torch import load_file

    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidModelError(f"{folder}: not a PEFT adapter folder")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise InvalidModelError(f"{folder}: only plain LoRA adapters can be served")
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pieces: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        match = _KEY.search(key)
        if match is None:
            if "lora_" in key:
                raise InvalidModelError(f"{weights_path}: unsupported LoRA weight {key}")
            continue  # e.g. modules_to_save are not supported for serving
        layer, proj, which = int(match[1]), match[2], match[3]
        if proj not in PROJECTIONS:
            raise InvalidModelError(f"{weights_path}: LoRA on {proj} is not supported")
        pieces.setdefault((layer, proj), {})[which] = tensor.to(device=device, dtype=torch.float32)
    factors = {k: (v["A"], v["B"], scale) for k, v in pieces.items() if "A" in v and "B" in v}
    return LoraAdapter(name, factors)
