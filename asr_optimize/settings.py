"""One place for every default a deployment may want to change: folders, endpoints, the cache root.

Read from the environment with the ``ASR_OPTIMIZE_`` prefix (``ASR_OPTIMIZE_STORE=s3://models/asr``), or from a
``.env`` file in the working directory. The CLI's defaults, the flow's parameters and the blocks all come from here,
so a default is written once. Standard variables keep their usual names: ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for S3 (boto3's own rule: the service-specific one wins) and ``HF_ENDPOINT`` for the hub.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Deployment-level defaults (per-stage knobs live in each stage's options model)."""

    model_config = SettingsConfigDict(env_prefix="ASR_OPTIMIZE_", env_file=".env", extra="ignore")

    store: str = Field("model_store", description="model store: a folder, s3://bucket/prefix or block:<name>")
    reports_dir: Path = Field(Path("reports"), description="folder for per-run reports")
    triton_repository: Path = Field(Path("triton_repository"), description="Triton model repository folder")
    triton_url: str | None = Field(None, description="Triton HTTP URL; unset: start the bundled tritonserver")
    cache_root: Path = Field(Path.home() / ".cache" / "asr-optimize",
                             description="downloads, the replica model, the bundled server's side venv")

    @property
    def s3_cache(self) -> Path:
        """Where artifacts downloaded from S3 are kept (``ASR_OPTIMIZE_S3_CACHE`` overrides)."""
        return Path(os.environ.get("ASR_OPTIMIZE_S3_CACHE") or self.cache_root / "s3")


def s3_endpoint_url() -> str | None:
    """The S3 endpoint boto3 would use: ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``, else AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
