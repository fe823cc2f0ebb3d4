"""Triton Inference Server deployment: model repository generation, the bundled server, hot-swap, health.

Requires ``tritonclient[http]`` (the ``triton`` extra) for anything that talks to a server; repository
generation needs only this package (and ``tritonclient[grpc]``'s protobuf classes to read configs back).
"""

from asr_optimize.triton.repository import (
    DEFAULT_MODEL_NAME,
    DEFAULT_PIPELINE_NAME,
    BatchingOptions,
    RepositoryError,
    VersionManifest,
)

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_PIPELINE_NAME", "BatchingOptions", "RepositoryError", "VersionManifest"]
