"""Convert a GGUF file into a Hugging Face safetensors folder, atomically."""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import InvalidModelError
from tuneloop.fileio import atomic_path


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise ``gguf`` into a float32 safetensors folder at ``dest``.

    The folder is written under a temporary name beside ``dest`` and renamed into place only
    when complete, so an interrupted or failed conversion never leaves a half-written model.
    """
    # imported here: torch and transformers take seconds to load, and the catalog (which imports
    # this module) is also used by light commands such as `tuneloop models list`
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_path(dest, directory=True) as tmp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:
            raise InvalidModelError(f"{gguf}: cannot be loaded as a model ({exc})") from exc
        # A GGUF-loaded model remembers its quantizer and refuses save_pretrained; the weights
        # are already dequantised to float32, so forgetting it is safe.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
