"""The base of every options model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Options as a user writes them (``--options`` files, Prefect blocks, flow parameters): an unknown field is an
    error that names it, never silently ignored, so a typo cannot fall back to a default unnoticed."""

    model_config = ConfigDict(extra="forbid")
