"""asr-optimize: turn a wav2vec2 CTC model into fast, verified, deployable inference artifacts.

The package holds the runtime code that several stages share (model resolution, audio I/O, CTC decoding,
runners, the artifact store). The stages themselves live in the top-level ``tasks`` package and the
pipeline in ``flows``.
"""

__version__ = "0.1.0"
