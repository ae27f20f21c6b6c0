"""LoRA adapters as plain tensors, for the engine's multi-adapter batched forward pass.

A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) becomes a map from
(layer index, projection name) to ``(At, Bt)`` so that ``y += (x @ At) @ Bt`` (PEFT's A and B
transposed, B multiplied by the adapter's scale). A decode step applies the adapters of all its
rows in one C call per projection (``LoraRows``, ``kernels/lora.c``), or, where the kernels are not
built, in torch: one adapter's rows with two matmuls, a mix of adapters with two batched matmuls
over their stacked factors (``LoraStack``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneloop.errors import InvalidModelError
from tuneloop.fileio import changed_since_checksummed

RANK_UNIT = 8  # ranks are zero-padded to a multiple of this (kernels/lora.c works in chunks of 8)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclass
class LoraAdapter:
    """One adapter's low-rank factors per (layer, projection): ``At [in, r]`` and ``Bt [r, out]``."""

    name: str
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    #: factors kept in float16 (half the memory and bytes read; for the C kernel's int8-activation mode)
    half: bool = False

    def __post_init__(self) -> None:
        dtype = torch.float16 if self.half else torch.float32
        self.factors = {key: _padded(at.to(dtype), bt.to(dtype)) for key, (at, bt) in self.factors.items()}
        #: for the C kernel: row ``layer * 7 + projection`` holds At's and Bt's addresses and the rank
        entries = len(PROJECTIONS) * (1 + max((layer for layer, _ in self.factors), default=-1))
        self.table = torch.zeros(entries, 3, dtype=torch.long)
        for (layer, proj), (at, bt) in self.factors.items():
            self.table[entry(layer, proj)] = torch.tensor([at.data_ptr(), bt.data_ptr(), bt.shape[0]])

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.factors.values())


def _padded(at: torch.Tensor, bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors, contiguous, with the rank zero-padded to a multiple of 8 (the kernel's unit)."""
    if at.dim() != 2 or bt.dim() != 2 or at.shape[1] != bt.shape[0]:
        raise ValueError(f"LoRA factors must be [in, r] and [r, out], got {tuple(at.shape)} and {tuple(bt.shape)}")
    pad = -at.shape[1] % RANK_UNIT
    if pad:
        at, bt = torch.nn.functional.pad(at, (0, pad)), torch.nn.functional.pad(bt, (0, 0, 0, pad))
    return at.contiguous(), bt.contiguous()


_PROJECTION_INDEX = {name: i for i, name in enumerate(PROJECTIONS)}


def entry(layer: int, projection: str) -> int:
    """A (layer, projection)'s row in ``LoraAdapter.table``."""
    return layer * len(PROJECTIONS) + _PROJECTION_INDEX[projection]


WEIGHTS_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"


def lora_shapes(config) -> tuple[dict[str, tuple[int, int]], int]:
    """Each projection's (in, out) features in a Llama-style model, and its layer count (from its
    config): what a LoRA adapter's factors must fit."""
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    h, i = c.hidden_size, c.intermediate_size
    shapes = {
        "q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
        "o_proj": (heads * head_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }  # fmt: skip
    return shapes, c.num_hidden_layers


def load_lora(
    name: str, folder: Path, device: torch.device | str = "cpu", half: bool = False,
    shapes: dict[str, tuple[int, int]] | None = None, layers: int | None = None,
) -> LoraAdapter:  # fmt: skip
    """Read a PEFT LoRA folder (``half``: keep its factors in float16), verified: the checksum
    recorded at training time, every factor's shape (against ``shapes``, a projection's (in, out),
    and ``layers``) and finite values. Raises InvalidModelError, naming files but not where they
    are, for anything we cannot serve."""
    from safetensors import safe_open

    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise InvalidModelError(f"not a LoRA adapter: {CONFIG_FILE} or {WEIGHTS_FILE} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidModelError(f"{CONFIG_FILE} is unreadable ({type(exc).__name__}: {exc})") from exc
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or r < 1:
        raise InvalidModelError("only plain LoRA adapters (peft_type LORA, r >= 1) can be served")
    if WEIGHTS_FILE in changed_since_checksummed(folder):
        raise InvalidModelError(f"{WEIGHTS_FILE} does not match the checksum recorded when it was trained "
                                "(the file was changed or damaged)")  # fmt: skip
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    dtype = torch.float16 if half else torch.float32
    pieces: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as weights:  # one tensor at a time: no float32 copy
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                match = _KEY.search(key)
                if match is None:
                    if "lora_" in key:
                        raise InvalidModelError(f"{WEIGHTS_FILE}: unsupported LoRA weight {key}")
                    continue  # e.g. modules_to_save are not supported for serving
                layer, proj, which = int(match[1]), match[2], match[3]
                if proj not in PROJECTIONS:
                    raise InvalidModelError(f"{WEIGHTS_FILE}: LoRA on {proj} is not supported")
                factor = weights.get_tensor(key).to(device=device, dtype=torch.float32)
                _check_factor(key, factor, which, r, shapes.get(proj) if shapes else None, layer, layers)
                factor = factor.T * scale if which == "B" else factor.T  # B transposed and pre-scaled
                pieces.setdefault((layer, proj), {})[which] = factor.to(dtype).contiguous()
    except InvalidModelError:
        raise
    except Exception as exc:  # truncated or overwritten: safetensors' own errors
        raise InvalidModelError(f"{WEIGHTS_FILE} is unreadable ({type(exc).__name__})") from exc
    factors = {k: (v["A"], v["B"]) for k, v in pieces.items() if len(v) == 2}
    if not factors:
        raise InvalidModelError(f"{WEIGHTS_FILE} holds no LoRA factors")
    return LoraAdapter(name, factors, half)


def _check_factor(
    key: str, factor: torch.Tensor, which: str, r: int, shape: tuple[int, int] | None, layer: int, layers: int | None
) -> None:
    """A factor's shape (A: [r, in], B: [out, r]) and values, or InvalidModelError."""
    in_features, out_features = shape or (None, None)  # unknown without the base model: rank alone
    expected = (r, in_features) if which == "A" else (out_features, r)
    fits = all(want in (None, got) for want, got in zip(expected, factor.shape, strict=False))
    if factor.dim() != 2 or not fits or (layers is not None and layer >= layers):
        raise InvalidModelError(f"{WEIGHTS_FILE}: {key} has shape {tuple(factor.shape)}, which does not fit the "
                                f"base model (rank {r})")  # fmt: skip
    if not torch.isfinite(factor).all():
        raise InvalidModelError(f"{WEIGHTS_FILE}: {key} holds values that are not finite (the file is damaged)")


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
    rank = max(bt.shape[0] for adapter in adapters for _, bt in adapter.factors.values())
    stacked_a, stacked_b = {}, {}
    for key in keys:
        like_at, like_bt = next(adapter.factors[key] for adapter in adapters if key in adapter.factors)
        a = like_at.new_zeros(len(adapters), like_at.shape[0], rank)
        b = like_at.new_zeros(len(adapters), rank, like_bt.shape[1])
        for i, adapter in enumerate(adapters):
            if key in adapter.factors:
                at, bt = adapter.factors[key]
                a[i, :, : at.shape[1]] = at
                b[i, : at.shape[1]] = bt
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


@dataclass
class StackedLora:
    """A batch mixing adapters, in torch: two batched matmuls per projection over a ``LoraStack``."""

    stack: LoraStack
    rows: StackRows

    def add(self, y: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> None:
        if (layer, projection) in self.stack.a:
            self.rows.add(y, x, self.stack.a[(layer, projection)], self.stack.b[(layer, projection)])


@dataclass
class LoraGroups:
    """Adapters in torch, one after another: each (adapter, rows) pair's rows (a slice of the batch,
    or None for all of it) get two matmuls per projection, accumulated in place."""

    groups: list[tuple[LoraAdapter, slice | None]]

    def add(self, y: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> None:
        for adapter, rows in self.groups:
            factors = adapter.factors.get((layer, projection))
            if factors is not None:
                xs, ys = (x, y) if rows is None else (x[rows], y[rows])
                ys.addmm_(xs @ factors[0], factors[1])


class LoraRows:
    """A decode step's adapters for the C kernel: group g (adapter ``adapters[g]``) is the rows
    ``starts[g]`` to ``starts[g + 1]``; ``add`` applies every group's update to one projection."""

    def __init__(self, lib, adapters: list[LoraAdapter], starts: list[int]):
        if len({a.half for a in adapters}) > 1:
            raise ValueError("a batch mixes float16 and float32 adapters")
        self.kernel = lib.tl_lora_f16 if adapters[0].half else lib.tl_lora
        self.lib, self.groups = lib, len(adapters)
        self.entries = max(len(a.table) for a in adapters)
        self.table = torch.zeros(self.groups, self.entries, 3, dtype=torch.long)
        for g, adapter in enumerate(adapters):
            self.table[g, : len(adapter.table)] = adapter.table
        self.starts = torch.tensor(starts, dtype=torch.long)
        self.rank = int(self.table[:, :, 2].max())
        self.adapters = adapters  # the table points into their tensors
        self.scratch = torch.empty(starts[-1], max(self.rank, 1))  # x @ At of each row

    def add(self, y: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> None:
        """``y[rows of g] += (x[rows of g] @ At_g) @ Bt_g`` for every group, in place."""
        at = entry(layer, projection)
        if at >= self.entries:
            return
        m, k = x.shape
        if m > len(self.scratch) or not y.is_contiguous():
            raise ValueError(f"{m} rows for a batch of {len(self.scratch)}, or a strided output")
        x = x.contiguous()
        self.kernel(x.data_ptr(), y.data_ptr(), m, k, y.shape[1], self.groups, self.starts.data_ptr(),
                    self.table.data_ptr(), self.entries, at, self.scratch.data_ptr())  # fmt: skip
