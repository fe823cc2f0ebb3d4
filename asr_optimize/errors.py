"""Errors a user can act on. Each message names the problem and what to do about it."""


class AsrOptimizeError(Exception):
    """Base class: a clear, user-facing failure (never retried)."""


class ModelResolutionError(AsrOptimizeError):
    """The model id, path or URI cannot be resolved to a usable wav2vec2 CTC model."""


class UnsupportedModelError(AsrOptimizeError):
    """The model resolves, but it is not a Wav2Vec2ForCTC-style CTC model."""


class AudioInputError(AsrOptimizeError):
    """Audio has the wrong shape, sample rate, length or contains NaN/inf."""


class StoreError(AsrOptimizeError):
    """The artifact store cannot be read or written (permissions, missing bucket, bad credentials)."""


class ParityError(AsrOptimizeError):
    """An exported or optimized model disagrees with the PyTorch reference beyond tolerance."""


class TransientError(Exception):
    """A fault worth retrying (network blip, endpoint briefly down). Only these are retried."""


class UnsafePathError(StoreError):
    """A key or name would map outside the folder it belongs to (``..``, absolute path, symlink escape)."""


class NoSpaceError(StoreError):
    """The disk (or quota) filled up while writing; nothing half-written was published."""
