"""Audio in, windows out: decoding and validating files (``load``), silence-aware windows (``chunking``), long
recordings transcribed window by window and stitched (``longform``), and the long-form evaluation sets
(``longform_data``)."""
