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


@dataclass
class LoraStack:
    """Several adapters' factors side by side, so a batch mixing them applies every adapter in one
    pair of matmuls per projection: ``y += ((x @ a.T) * mask) @ b``, where the mask keeps each row's
    own adapter's columns (``columns``). B is stored transposed and pre-scaled."""

    adapters: tuple[LoraAdapter, ...]
    a: dict[tuple[int, str], torch.Tensor]  # [sum of ranks, in]
    b: dict[tuple[int, str], torch.Tensor]  # [sum of ranks, out]
    columns: list[slice]  # each adapter's columns

    def row_mask(self, groups: list[tuple[int, slice]], rows: int) -> torch.Tensor:
        """[rows, sum of ranks] mask for (adapter index, row slice) groups; rows in no group get none."""
        mask = torch.zeros(rows, self.columns[-1].stop, device=next(iter(self.a.values())).device)
        for index, span in groups:
            mask[span, self.columns[index]] = 1.0
        return mask


def stack_adapters(adapters: tuple[LoraAdapter, ...]) -> LoraStack:
    """Concatenate adapters' factors (a projection an adapter lacks gets zero blocks, smaller ranks
    are zero-padded to the adapter's largest: zeros add nothing)."""
    keys = sorted({key for adapter in adapters for key in adapter.factors})
    ranks = [max(a.shape[0] for a, _, _ in adapter.factors.values()) for adapter in adapters]
    starts = [sum(ranks[:i]) for i in range(len(ranks))]
    columns = [slice(s, s + r) for s, r in zip(starts, ranks, strict=True)]
    stacked_a, stacked_b = {}, {}
    for key in keys:
        shapes = next(adapter.factors[key] for adapter in adapters if key in adapter.factors)
        k, n = shapes[0].shape[1], shapes[1].shape[0]
        like = shapes[0]
        a = like.new_zeros(sum(ranks), k)
        b = like.new_zeros(sum(ranks), n)
        for adapter, cols in zip(adapters, columns, strict=True):
            if key in adapter.factors:
                fa, fb, scale = adapter.factors[key]
                a[cols.start : cols.start + fa.shape[0]] = fa
                b[cols.start : cols.start + fa.shape[0]] = fb.T * scale
        stacked_a[key], stacked_b[key] = a, b
    return LoraStack(adapters, stacked_a, stacked_b, columns)
