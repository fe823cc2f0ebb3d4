"""The model a run optimizes: where it comes from (``source``), its input/output contract (``io_spec``), how its
batches must be built (``inputs``: attention mask, padding), ONNX file helpers (``onnx_files``) and its CTC
vocabulary and greedy decoding (``ctc``)."""
