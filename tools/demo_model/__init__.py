"""Rebuild the bundled demo model and test set: synthetic Hindi speech (espeak-ng), training, evaluation."""
