"""Convert a GGUF file into a Hugging Face safetensors folder, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tuneloop.errors import InvalidModelError


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise ``gguf`` into a float32 safetensors folder at ``dest``.

    The folder is written under a temporary name beside ``dest`` and renamed into place only
    when complete, so an interrupted or failed conversion never leaves a half-written model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".converting-{dest.name}-"))
    try:
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
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
