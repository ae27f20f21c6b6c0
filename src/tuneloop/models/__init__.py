"""The base-model catalog: the bundled SmolLM2, local Hugging Face folders and GGUF files."""

from tuneloop.models.catalog import Catalog, ModelEntry
from tuneloop.models.loading import load_model, load_tokenizer

__all__ = ["Catalog", "ModelEntry", "load_model", "load_tokenizer"]
