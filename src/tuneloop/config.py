"""Settings: one typed object read from the environment (TUNELOOP_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything configurable about a tuneloop installation.

    Each field can be set through an environment variable named ``TUNELOOP_<FIELD>``,
    for example ``TUNELOOP_HOME=/data/tuneloop``.
    """

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".tuneloop",
        description="Folder holding the model catalog, converted models, files, jobs and the database.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job store; default: SQLite at HOME/tuneloop.db.",
    )
    device: str = Field(
        default="auto", description="Torch device for training and serving: auto, cpu, cuda, cuda:N, mps."
    )
    org: str = Field(default="local", description="Organisation slug used in fine-tuned model ids.")
    api_key: str | None = Field(
        default=None, description="When set, every HTTP route but the health check requires this Bearer key."
    )
    max_upload_bytes: int = Field(default=512 * 1024**2, description="Largest accepted file upload.")
    max_request_bytes: int = Field(
        default=16 * 1024**2, description="Largest accepted request body other than a file upload."
    )
    worker_stale_seconds: float = Field(
        default=60.0, description="A running job whose worker has not heartbeated for this long is taken over."
    )
    worker_poll_seconds: float = Field(default=1.0, description="How often a worker looks for work and requests.")
    max_job_attempts: int = Field(
        default=3, ge=1,
        description="Times a job runs before it fails when its training process dies (killed, out of memory): "
        "each retry resumes from the latest checkpoint.",
    )  # fmt: skip
    max_batch: int = Field(default=16, description="Sequences decoded together per base model.")
    max_queued_requests: int = Field(default=64, description="Requests waiting per model before answering 429.")
    max_adapters: int = Field(default=8, description="LoRA adapters kept loaded (least recently used evicted).")
    serve_weights: Literal["auto", "float32", "int8"] = Field(
        default="auto",
        description=(
            "Weights the serving engine decodes from: auto = a GGUF model's own int8/4-bit blocks where they "
            "reproduce its weights exactly (lossless), else float32; float32 = always float32; int8 = also "
            "quantize every other linear layer to int8 per group of 32 (faster, slightly lossy)."
        ),
    )
    serve_activations: Literal["auto", "float32", "int8"] = Field(
        default="auto",
        description=(
            "What quantized layers multiply their codes with: int8 = activations rounded to int8 per block "
            "of 32 (integer dot products, AVX-512 VNNI), with a float16 KV cache and float16 adapters: 1.3x "
            "faster for one stream, 1.8x for 16, at a small, llama.cpp-like loss of precision; float32 = exact "
            "float32 activations; auto = int8 where the CPU has the kernel, else float32."
        ),
    )
    num_threads: int | None = Field(
        default=None, description="CPU threads for torch; default: the number of available cores."
    )
    adaptive_threads: bool = Field(
        default=True,
        description=(
            "Run a step (decode or training) on one thread while other work shares the cores, and on all of "
            "them again once they are free (tuneloop.cpu): a parallel step whose threads cannot run side by "
            "side waits at every barrier."
        ),
    )
    train_nice: int = Field(
        default=5, ge=0, le=19,
        description="How much lower the OS priority of training runs (tuneloop train, the worker's jobs) "
        "than serving on the same machine (a nice increment; 0: the same).",
    )  # fmt: skip

    @property
    def models_dir(self) -> Path:
        """Folder of converted and registered models."""
        return self.home / "models"

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside HOME."""
        return self.database_url or f"sqlite:///{self.home / 'tuneloop.db'}"

    def resolved_device(self) -> str:
        """The torch device to use: the configured one, or the best available for ``auto``."""
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        return "cpu"


def get_settings() -> Settings:
    """Read the settings from the environment (fresh each call, so tests can change it)."""
    return Settings()
