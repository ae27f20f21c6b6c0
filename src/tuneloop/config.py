"""Settings: one typed object read from the environment (TUNELOOP_*)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Upstream(BaseModel):
    """An upstream OpenAI-compatible server of gateway mode: ``NAME=[KEY_ENV@]BASE_URL``.

    Requests for model ``NAME/<id>`` go to ``BASE_URL`` as model ``<id>``, with the key held by the
    environment variable ``KEY_ENV`` (its name only is kept here, never the key).
    """

    model_config = ConfigDict(frozen=True)
    name: str
    base_url: str
    key_env: str | None = None

    @classmethod
    def parse(cls, value: str) -> Upstream:
        """``NAME=[KEY_ENV@]BASE_URL``; a ValueError with a one-line reason when it is not that."""
        name, sep, rest = value.strip().partition("=")
        if not sep or not rest:
            raise ValueError(f"expected NAME=[KEY_ENV@]BASE_URL, got '{value}'")
        if not _UPSTREAM_NAME.match(name):
            raise ValueError(f"the name '{name}' must be 1-64 letters, digits, '.', '_' or '-' (no '/')")
        key_env, at, url = rest.partition("@")
        if not at or "://" in key_env:  # no key, or an '@' inside the URL (http://user@host)
            key_env, url = None, rest
        elif not _ENV_VAR.match(key_env):
            raise ValueError(f"'{key_env}' is not an environment variable name (in '{value}')")
        if not re.match(r"^https?://[^/\s]+", url) or any(c.isspace() for c in url):
            raise ValueError(f"the base URL '{url}' of '{name}' must start with http:// or https://")
        return cls(name=name, base_url=url.rstrip("/"), key_env=key_env)

    def spec(self) -> str:
        """The ``NAME=[KEY_ENV@]BASE_URL`` text this upstream was parsed from."""
        return f"{self.name}={self.key_env + '@' if self.key_env else ''}{self.base_url}"


def check_upstreams(upstreams: list[Upstream]) -> list[Upstream]:
    """``upstreams`` if no two share a name; a ValueError naming the first repeated one."""
    seen: set[str] = set()
    for u in upstreams:
        if u.name in seen:
            raise ValueError(f"two upstreams are named '{u.name}'")
        seen.add(u.name)
    return upstreams


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
            "of 32 (integer dot products: AVX-512 VNNI, or AVX2's vpmaddubsw, bit-identical), with a float16 KV "
            "cache and float16 adapters: faster (AVX-512 VNNI: 1.3x for one stream, 1.8x for 16), at a small, "
            "llama.cpp-like loss of precision; float32 = exact float32 activations; auto = int8 where the C "
            "kernels run (x86-64 with AVX2 and a C compiler), else float32."
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
    upstreams: list[Upstream] = Field(
        default_factory=list,
        description="Gateway mode: upstream OpenAI-compatible servers, each NAME=[KEY_ENV@]BASE_URL (tuneloop "
        "serve --upstream; here a JSON list of such strings). A chat request for model NAME/<id> that tuneloop "
        "does not host goes to BASE_URL as model <id>, with the key from the environment variable KEY_ENV.",
    )
    upstream_timeout_seconds: float = Field(
        default=300.0, gt=0,
        description="How long the gateway waits for an upstream to connect or to send more of its answer "
        "(the whole of a non-streamed one) before answering 504 upstream_timeout.",
    )  # fmt: skip
    upstream_retries: int = Field(
        default=2, ge=0, le=10,
        description="Retries of a request an upstream could not take (connection failed, 408, 409, 429, 5xx), "
        "with exponential backoff or the upstream's retry-after (up to 30 s); never once an answer streams.",
    )  # fmt: skip
    train_nice: int = Field(
        default=19, ge=0, le=19,
        description="How much lower the OS priority of training runs (tuneloop train, the worker's jobs) "
        "than serving on the same machine (a nice increment; 0: the same). With 19, one or two streams "
        "decode on all cores beside a training run, and a batch of streams leaves it one (tuneloop.cpu).",
    )  # fmt: skip

    @field_validator("upstreams", mode="before")
    @classmethod
    def _parse_upstreams(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Upstream.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("upstreams")
    @classmethod
    def _unique_upstreams(cls, value: list[Upstream]) -> list[Upstream]:
        return check_upstreams(value)

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
