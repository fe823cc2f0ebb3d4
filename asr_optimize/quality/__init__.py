"""Is an artifact right? Hindi text normalization (``normalize``), WER/CER and parity metrics (``metrics``), the
promotion gate (``gate``), parity audio (``parity``) and the evaluation sets (``eval_sets``)."""
