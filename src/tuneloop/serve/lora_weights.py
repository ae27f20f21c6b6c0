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
    """Several adapters' factors stacked, so a batch mixing them applies all of them with two
    batched matmuls per projection (``bmm``: adapter g's rows times adapter g's factors).

    A is stored as [adapters, in, rank], B transposed and pre-scaled as [adapters, rank, out]; a
    projection an adapter lacks gets zero factors, and smaller ranks are zero-padded (zeros add nothing).
    """

    adapters: tuple[LoraAdapter, ...]
    a: dict[tuple[int, str], torch.Tensor]
    b: dict[tuple[int, str], torch.Tensor]


def stack_adapters(adapters: tuple[LoraAdapter, ...]) -> LoraStack:
    """Stack the factors of ``adapters`` (in the order a batch's row groups will use)."""
    keys = sorted({key for adapter in adapters for key in adapter.factors})
    rank = max(a.shape[0] for adapter in adapters for a, _, _ in adapter.factors.values())
    stacked_a, stacked_b = {}, {}
    for key in keys:
        like_a, like_b, _ = next(adapter.factors[key] for adapter in adapters if key in adapter.factors)
        a = like_a.new_zeros(len(adapters), like_a.shape[1], rank)
        b = like_a.new_zeros(len(adapters), rank, like_b.shape[0])
        for i, adapter in enumerate(adapters):
            if key in adapter.factors:
                fa, fb, scale = adapter.factors[key]
                a[i, :, : fa.shape[0]] = fa.T
                b[i, : fa.shape[0]] = fb.T * scale
        stacked_a[key], stacked_b[key] = a, b
    return LoraStack(adapters, stacked_a, stacked_b)


@dataclass
class StackRows:
    """How a batch's rows meet a stack: group g's rows, padded to ``width`` by repeating its last row,
    are rows ``g * width ...`` of the batched product; ``rows`` is the slice of the batch they cover."""

    width: int
    rows: slice
    gather: torch.Tensor | None  # batch row for each padded row (None: groups are equal, no padding)
    scatter: torch.Tensor | None  # padded row for each row of ``rows``

    @staticmethod
    def of(groups: list[slice]) -> StackRows:
        """For contiguous, adjacent row slices (one per adapter of the stack, in order)."""
        sizes = [g.stop - g.start for g in groups]
        width, rows = max(sizes), slice(groups[0].start, groups[-1].stop)
        if len(set(sizes)) == 1:
            return StackRows(width, rows, None, None)
        gather = [g.start + min(i, size - 1) for g, size in zip(groups, sizes, strict=True) for i in range(width)]
        scatter = [k * width + i for k, size in enumerate(sizes) for i in range(size)]
        return StackRows(width, rows, torch.tensor(gather), torch.tensor(scatter))

    def add(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """``y[rows] += each row's (x @ A) @ B`` with its own adapter's factors, in place."""
        xs = x[self.rows] if self.gather is None else x.index_select(0, self.gather.to(x.device))
        out = torch.bmm(torch.bmm(xs.view(a.shape[0], self.width, -1), a), b).view(-1, b.shape[2])
        y[self.rows].add_(out if self.scatter is None else out.index_select(0, self.scatter.to(x.device)))
