"""The project's fused wav2vec2 engine: folded weights, fused kernels and CUDA graphs (``fused``, ``kernels``)."""
