"""Which of a model's linear layers the engine decodes from quantized codes, and where the codes come from.

* From the GGUF file the model was converted from: its Q8_0 / Q4_0 / Q4_1 blocks are the weights'
  own values (the float32 model is their dequantization), so decoding from them is lossless. Every
  layer is checked: its codes must reproduce the loaded float32 weight exactly, or the layer stays
  float32 (a fully fine-tuned model's changed weights, say).
* ``int8`` mode also quantizes every other linear layer (symmetric int8 per group of 32): faster
  for models that come as float32 folders, at a small cost in accuracy.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tuneloop.engine import native
from tuneloop.engine.quantized import GROUP, GroupQuantized, Int8ActivationCodes, QuantizedWeight, quantize_int8
from tuneloop.fileio import atomic_path

log = logging.getLogger(__name__)

ServeWeights = Literal["auto", "float32", "int8"]
ServeActivations = Literal["auto", "float32", "int8"]

#: GGUF tensor name (in block N) -> Hugging Face module path
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def pack_model(
    model,
    mode: ServeWeights,
    gguf: Path | None = None,
    cache_dir: Path | None = None,
    activations: ServeActivations = "float32",
) -> dict[str, QuantizedWeight]:
    """Module name -> quantized codes for each linear layer to decode quantized (empty: all float32).

    With ``cache_dir`` the codes read from ``gguf`` are kept there (parsing a GGUF's metadata takes
    seconds; the cached codes load in a fraction of that) and checked against the weights again.
    ``activations`` int8 (or auto) lays the codes out for products with activations rounded to int8
    (``Int8ActivationCodes``)."""
    if mode == "float32" or next(model.parameters()).device.type != "cpu" or not native.available():
        return {}
    packed = _codes(model, mode, gguf, cache_dir)
    if not packed or not int8_activations(activations):
        return packed
    return {name: Int8ActivationCodes.from_codes(codes) for name, codes in packed.items()}


def int8_activations(activations: ServeActivations) -> bool:
    """Whether quantized layers multiply int8-rounded activations (``int8``: required, ``auto``:
    where this CPU has the kernel for it)."""
    if activations == "float32":
        return False
    if native.available():
        return True
    if activations == "int8":
        raise RuntimeError(
            f"int8 activations need the C kernels ({native.error()}; set TUNELOOP_SERVE_ACTIVATIONS to auto or float32)"
        )
    return False


def _codes(model, mode: ServeWeights, gguf: Path | None, cache_dir: Path | None) -> dict[str, GroupQuantized]:
    """The GGUF's own codes for the layers they reproduce, and in ``int8`` mode every other layer's."""
    linears = _linear_modules(model)
    packed = {}
    if gguf is not None:
        try:
            packed = _cached_gguf_codes(model, linears, gguf, cache_dir)
        except Exception as exc:  # an unreadable GGUF costs speed, never the model
            log.warning("cannot read %s for int8 decoding, serving float32 weights: %s", gguf, exc)
    if mode == "int8":
        for name, module in linears.items():
            if name not in packed and module.weight.shape[1] % GROUP == 0:
                packed[name] = quantize_int8(module.weight)
    return packed


def _cached_gguf_codes(model, linears, gguf: Path, cache_dir: Path | None) -> dict[str, GroupQuantized]:
    """``_from_gguf``, through a safetensors file in ``cache_dir`` named after the GGUF's path, size and mtime."""
    if cache_dir is None:
        return _from_gguf(model, linears, gguf)
    from safetensors.torch import load_file, save_file

    stat = gguf.stat()
    source = f"{_CACHE_FORMAT}:{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = cache_dir / f"{gguf.stem}-{key}.safetensors"
    tensors = None
    if path.is_file():
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # a damaged cache file: made again below
            log.warning("the int8 code cache %s is unreadable (%s); rebuilding it", path.name, type(exc).__name__)
            path.unlink(missing_ok=True)
    if tensors is not None:
        codes = {
            name[: -len(".codes")]: GroupQuantized(
                t, tensors[name.replace(".codes", ".scale")], tensors.get(name.replace(".codes", ".offset"))
            )
            for name, t in tensors.items()
            if name.endswith(".codes")
        }
        # checked again: the float32 weights may have changed since (a re-conversion)
        return {name: c for name, c in codes.items() if name in linears and _reproduces(c, linears[name])}
    packed = _from_gguf(model, linears, gguf)
    tensors = {}
    for name, c in packed.items():
        tensors[f"{name}.codes"], tensors[f"{name}.scale"] = c.codes, c.scale
        if c.offset is not None:
            tensors[f"{name}.offset"] = c.offset
    try:
        with atomic_path(path) as tmp:  # concurrent servers each leave a complete file
            save_file(tensors, str(tmp))
    except Exception as exc:  # a full disk, a read-only folder: int8 decoding goes on from memory
        log.warning("could not write the int8 code cache in %s (%s: %s); decoding from the codes in memory, "
                    "the next start tries again", cache_dir, type(exc).__name__, exc)  # fmt: skip
    return packed


def _linear_modules(model) -> dict[str, torch.nn.Module]:
    """The decoder's projections and the output head, by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (name == "lm_head" or name.rsplit(".", 1)[-1] in _PROJECTIONS)
    }


_PROJECTIONS = {path.rsplit(".", 1)[-1] for path in _BLOCK_TENSORS.values()}
#: bumped when the cached codes' layout changes (2: 4-bit codes packed two per byte)
_CACHE_FORMAT = 2


def _from_gguf(model, linears: dict[str, torch.nn.Module], gguf: Path) -> dict[str, GroupQuantized]:
    """Codes read from ``gguf`` for the layers whose float32 weight they reproduce exactly."""
    from gguf import GGUFReader

    config = model.config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    head = linears.get("lm_head")
    tied = head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    packed, skipped = {}, 0
    for tensor in GGUFReader(str(gguf)).tensors:
        name = _hf_name(tensor.name, tied)
        if name not in linears:
            continue
        codes = _decode_blocks(tensor)
        kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
        candidates = _row_orders(codes, heads.get(kind)) if codes is not None else []
        match = next((c for c in candidates if _reproduces(c, linears[name])), None)
        if match is None:
            skipped += 1
        else:
            packed[name] = match
    if skipped:
        log.info("%d GGUF tensors do not match the loaded weights and stay float32", skipped)
    return packed


def _reproduces(codes: GroupQuantized, module: torch.nn.Module) -> bool:
    """Whether ``codes`` stand for exactly ``module``'s float32 weight."""
    weight = module.weight.detach()
    return codes.shape == tuple(weight.shape) and torch.equal(codes.dequantize(), weight)


def _hf_name(gguf_name: str, tied: bool) -> str | None:
    """The Hugging Face module a GGUF tensor is the weight of (the tied embedding is the head's)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK_TENSORS and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_BLOCK_TENSORS[parts[2]]}"
    if gguf_name == "output.weight" or (gguf_name == "token_embd.weight" and tied):
        return "lm_head"
    return None


def _decode_blocks(tensor) -> GroupQuantized | None:
    """Codes, scales and offsets of a Q8_0 / Q4_0 / Q4_1 tensor (None for other types); 4-bit codes
    stay packed two per byte, as the blocks hold them (Q4_0's ``s * (q - 8)`` as ``s * q - 8 s``)."""
    kind = tensor.tensor_type.name
    layout = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}.get(kind)
    if layout is None:
        return None
    k = int(tensor.shape[0])
    data = np.asarray(tensor.data, dtype=np.uint8)
    n = data.size // (k // GROUP * layout)
    blocks = data.reshape(n, k // GROUP, layout)
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    offset = None
    if kind == "Q8_0":
        codes = blocks[..., 2:34].copy().view(np.int8).reshape(n, k)
    else:
        codes = (blocks[..., 2:18] if kind == "Q4_0" else blocks[..., 4:20]).copy().reshape(n, k // 2)
        if kind == "Q4_0":
            offset = torch.from_numpy(scale * -8.0)
        else:
            offset = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    return GroupQuantized(torch.from_numpy(codes).contiguous(), torch.from_numpy(scale), offset)


def _row_orders(codes: GroupQuantized, n_head: int | None) -> list[GroupQuantized]:
    """The tensor as stored, and, for q/k, with llama.cpp's rotary row permutation undone."""
    candidates = [codes]
    n = codes.shape[0]
    if n_head and n % (2 * n_head) == 0:
        index = torch.arange(n).reshape(n_head, n // n_head // 2, 2).transpose(1, 2).reshape(-1)
        offset = codes.offset[index].contiguous() if codes.offset is not None else None
        candidates.append(GroupQuantized(codes.codes[index].contiguous(), codes.scale[index].contiguous(), offset))
    return candidates
