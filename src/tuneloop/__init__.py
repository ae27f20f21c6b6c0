"""tuneloop: self-hosted fine-tuning for open language models, OpenAI-compatible."""

__version__ = "0.1.0"
