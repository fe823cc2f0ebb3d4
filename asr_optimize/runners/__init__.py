"""One runner interface for every backend; benchmarks, WER and parity use nothing else."""

from asr_optimize.runners.base import Runner, RunnerUnavailable, transcribe

__all__ = ["Runner", "RunnerUnavailable", "transcribe"]
