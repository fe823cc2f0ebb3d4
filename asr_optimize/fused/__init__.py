"""The project's own fused inference engine for wav2vec2 CTC models (see ``asr_optimize.fused.engine``)."""
