"""One runner interface for every backend (``base.Runner``) and a registry that builds any of them by name.

Transcription of any length through a runner lives in ``asr_optimize.transcribe``.
"""

from asr_optimize.runners.base import Runner, RunnerUnavailable

__all__ = ["Runner", "RunnerUnavailable"]
