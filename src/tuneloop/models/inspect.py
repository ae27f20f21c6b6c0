"""Read a model's facts (architecture, context, chat template, size) without loading its weights.

Also the integrity checks that turn a corrupt or truncated file into a clear error naming it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tuneloop.errors import InvalidModelError

#: Hugging Face architectures we can train and serve (Llama family).
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
#: The same families as GGUF ``general.architecture`` values.
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class ModelFacts:
    """What the catalog records about a model."""

    architecture: str
    context_length: int
    parameter_count: int
    chat_template: str | None


def read_safetensors_header(path: Path) -> dict:
    """Parse a safetensors header and check the file holds every byte it promises."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise InvalidModelError(f"{path}: not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, 100 * 1024**2):
                raise InvalidModelError(f"{path}: corrupt safetensors header")
            header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path}: corrupt safetensors header ({exc})") from exc
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read ({exc.strerror})") from exc
    if not isinstance(header, dict):
        raise InvalidModelError(f"{path}: corrupt safetensors header")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
    if 8 + header_len + end > size:
        raise InvalidModelError(
            f"{path}: truncated safetensors file ({size} bytes, header promises {8 + header_len + end})"
        )
    return tensors


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path}: not valid JSON ({exc})") from exc


def _folder_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = _read_json(config).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def inspect_hf_folder(folder: Path) -> ModelFacts:
    """Check that ``folder`` is a usable Hugging Face model folder and read its facts."""
    if not folder.is_dir():
        raise InvalidModelError(f"{folder}: not a folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidModelError(f"{folder}: not a model folder (no config.json)")
    config = _read_json(config_path)
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else ""
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise InvalidModelError(
            f"{config_path}: unsupported architecture '{architecture or 'unknown'}' "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise InvalidModelError(f"{folder}: no *.safetensors weights (convert .bin checkpoints first)")
    n_params = 0
    for file in weights:
        for tensor in read_safetensors_header(file).values():
            n_params += math.prod(tensor["shape"])
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise InvalidModelError(f"{folder}: no tokenizer (tokenizer.json / tokenizer_config.json)")
    context = int(config.get("max_position_embeddings") or 2048)
    return ModelFacts(architecture, context, n_params, _folder_chat_template(folder))


def inspect_gguf(path: Path) -> ModelFacts:
    """Check that ``path`` is a complete GGUF file of a supported architecture and read its facts."""
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    stat = path.stat()
    return _inspect_gguf_cached(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _inspect_gguf_cached(path: Path, size: int, mtime_ns: int) -> ModelFacts:
    try:
        fields, n_params, data_end = read_gguf_header(path)
    except (ValueError, struct.error, UnicodeDecodeError, OSError) as exc:
        raise InvalidModelError(f"{path}: corrupt or truncated GGUF file ({exc})") from exc
    if data_end > size:
        raise InvalidModelError(f"{path}: truncated GGUF file ({size} bytes, tensors need {data_end})")
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise InvalidModelError(
            f"{path}: unsupported GGUF architecture '{arch}' (supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )
    hf_arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[arch]
    context = int(fields.get(f"{arch}.context_length") or 2048)
    return ModelFacts(hf_arch, context, n_params, fields.get("tokenizer.chat_template"))


# GGUF value types -> struct formats (8: string, 9: array are handled separately).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_header(path: Path) -> tuple[dict, int, int]:
    """Read a GGUF file's scalar metadata, parameter count and the byte offset its data ends at.

    Arrays (the vocabulary, merges) are skipped, so this takes milliseconds where the ``gguf``
    package's reader takes seconds.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as f:
        data = f.read(64 * 1024**2)  # metadata (vocabulary included) is well under this
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("Q")
        if pos + n > len(data):
            raise ValueError("string runs past the end of the header")
        pos += n
        return data[pos - n : pos].decode("utf-8")

    def value(vtype: int):
        nonlocal pos
        if vtype in _GGUF_SCALARS:
            return take(_GGUF_SCALARS[vtype])
        if vtype == 8:
            return string()
        if vtype == 9:
            etype, count = take("I"), take("Q")
            if etype in _GGUF_SCALARS:
                pos += count * struct.calcsize(_GGUF_SCALARS[etype])
            else:
                for _ in range(count):
                    value(etype)
            return None
        raise ValueError(f"unknown GGUF value type {vtype}")

    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file (bad magic)")
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    if version < 2:
        raise ValueError(f"unsupported GGUF version {version}")
    fields = {}
    for _ in range(n_kv):
        key = string()
        fields[key] = value(take("I"))
    n_params, data_bytes = 0, 0
    for _ in range(n_tensors):
        string()
        dims = [take("Q") for _ in range(take("I"))]
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(take("I"))]
        offset = take("Q")
        n = math.prod(dims)
        n_params += n
        data_bytes = max(data_bytes, offset + n // block * type_size)
    alignment = int(fields.get("general.alignment") or 32)
    data_start = (pos + alignment - 1) // alignment * alignment
    return fields, n_params, data_start + data_bytes
