"""Prefect Block classes: where artifacts live (ModelStore) and which Triton server to deploy to (TritonTarget)."""

from blocks.model_store import ModelStore
from blocks.triton_target import TritonTarget

__all__ = ["ModelStore", "TritonTarget"]
