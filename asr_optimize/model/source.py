"""Resolve a model reference (hub id + revision, local folder, or s3:// URI) to a pinned local folder.

The resolved revision is what every manifest records: the hub commit sha, or ``sha256:<tree hash>`` for a
folder or an S3 prefix (folders have no commits, so their content is their revision).

Safety: never ``trust_remote_code``; safetensors are loaded where offered, and transformers loads
``pytorch_model.bin`` with ``torch.load(weights_only=True)``. ``config.json`` is checked before anything is hashed
(``--model /usr`` fails at once), and weights that lack tensors the config declares (a CTC head without its
``lm_head``) are refused instead of silently initialised at random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from asr_optimize.errors import ModelResolutionError, TransientError, UnsafePathError, UnsupportedModelError
from asr_optimize.fileio import safe_join
from asr_optimize.hashing import sha256_tree
from asr_optimize.model.ctc import MAX_VOCAB_SIZE, blank_id, read_vocabulary
from asr_optimize.settings import get_settings
from asr_optimize.store.local import slugify_model

# CTC heads whose graph matches wav2vec2's (conv feature encoder + transformer + linear CTC head).
SUPPORTED_ARCHITECTURES = {
    "Wav2Vec2ForCTC",
    "Wav2Vec2ConformerForCTC",
    "HubertForCTC",
    "WavLMForCTC",
    "Data2VecAudioForCTC",
}
MODEL_FILES = [
    "config.json",
    "preprocessor_config.json",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TRAINING_ONLY_KEYS = ("masked_spec_embed",)
"""Parameters only used in pre-training (SpecAugment's mask embedding): absent from many fine-tuned checkpoints."""


class ResolvedModel(BaseModel):
    """A model pinned to an exact revision and available as a local folder."""

    source: str
    kind: Literal["hub", "local", "s3"]
    revision: str
    local_dir: Path
    architecture: str

    @property
    def slug(self) -> str:
        return slugify_model(self.source)


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json, with a clear error when it is missing or not JSON."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelResolutionError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelResolutionError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ModelResolutionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(config, dict):
        raise ModelResolutionError(
            f"{path} holds a JSON {type(config).__name__}, not an object: not a Hugging Face model config"
        )
    return config


def check_ctc_model(model_dir: Path, require_weights: bool = True) -> str:
    """Refuse anything that is not a wav2vec2-style CTC model. Returns the architecture name."""
    config = read_config(model_dir)
    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    if not isinstance(architectures, list):
        architectures = [str(architectures)]
    supported = [a for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not supported:
        raise UnsupportedModelError(
            f"{model_dir}: architectures {architectures or '(none)'} (model_type "
            f"{config.get('model_type')!r}) is not a supported CTC model; expected one of "
            f"{sorted(SUPPORTED_ARCHITECTURES)}"
        )
    check_config_sizes(config, model_dir)  # before anything is built from it: a hostile size fails in milliseconds
    if require_weights and not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise ModelResolutionError(
            f"{model_dir} has no weights (model.safetensors or pytorch_model.bin); for a config-only "
            "folder such as the replica architecture use `asr-optimize init-random`"
        )
    vocab = read_vocabulary(model_dir, config)  # len == vocab_size, ids 0..N-1: never padded, refused
    blank_id(vocab, config, model_dir)
    head = head_outputs(model_dir)
    if head is not None and head != len(vocab):
        raise ModelResolutionError(
            f"{model_dir}: the CTC head (lm_head.weight) has {head} outputs, but vocab.json and config.json "
            f"vocab_size have {len(vocab)} tokens: every output would decode to the wrong letter; use the vocabulary "
            "the model was trained with"
        )
    return supported[0]


CONFIG_LIMITS = {
    "num_hidden_layers": 256, "hidden_size": 16384, "intermediate_size": 65536, "num_attention_heads": 1024,
    "vocab_size": MAX_VOCAB_SIZE, "num_conv_pos_embeddings": 4096, "num_conv_pos_embedding_groups": 1024,
    "num_feat_extract_layers": 64, "output_hidden_size": 16384, "num_adapter_layers": 64,
}
"""Upper bounds on a config's sizes, each far above any real wav2vec2-style model (XLS-R 2B: 48 layers, 1920 wide).
A config beyond them is corrupt or hostile: ``num_hidden_layers: 100000`` would allocate for many minutes first."""
CONFIG_LIST_LIMITS = {"conv_dim": 16384, "conv_kernel": 4096, "conv_stride": 4096}
MAX_CONV_LAYERS = 64


def check_config_sizes(config: dict[str, Any], where: Path | str) -> None:
    """Refuse a config whose sizes are not positive whole numbers within ``CONFIG_LIMITS`` (before any build)."""
    def bad(key: str, value: Any, limit: int) -> ModelResolutionError:
        return ModelResolutionError(
            f"{where}: config.json {key} is {value!r}; expected a whole number from 1 to {limit:,} (beyond that the "
            "config is corrupt, and building the model would exhaust memory before failing): fix config.json"
        )

    def whole(value: Any, limit: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit

    for key, limit in CONFIG_LIMITS.items():
        if key in config and config[key] is not None and not whole(config[key], limit):
            raise bad(key, config[key], limit)
    for key, limit in CONFIG_LIST_LIMITS.items():
        values = config.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_CONV_LAYERS:
            raise ModelResolutionError(f"{where}: config.json {key} must be a list of 1 to {MAX_CONV_LAYERS} "
                                       f"whole numbers, got {str(values)[:80]}")
        for value in values:
            if not whole(value, limit):
                raise bad(f"{key} entry", value, limit)


def head_outputs(model_dir: Path) -> int | None:
    """Rows of ``lm_head.weight`` read from the safetensors header (no tensor is loaded); None when unknown
    (``pytorch_model.bin``, no head, an unreadable header: loading the weights reports those)."""
    try:
        path = model_dir / "model.safetensors"
        if not path.is_file():
            index = json.loads((model_dir / "model.safetensors.index.json").read_text(encoding="utf-8"))
            path = safe_join(model_dir, str(index["weight_map"]["lm_head.weight"]))
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= 100 * 1024 * 1024:
                return None
            header = json.loads(handle.read(length))
        shape = header["lm_head.weight"]["shape"]
        return int(shape[0]) if isinstance(shape, list) and len(shape) == 2 else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnsafePathError):
        return None


def _resolve_hub(repo_id: str, revision: str | None, cache_dir: Path | None) -> tuple[Path, str]:
    """Download (or reuse from cache) a hub snapshot at an exact commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=MODEL_FILES,
                cache_dir=cache_dir,
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except GatedRepoError as exc:
        raise ModelResolutionError(f"{repo_id} is gated: set HF_TOKEN to a token with access") from exc
    except RepositoryNotFoundError as exc:
        raise ModelResolutionError(
            f"model {repo_id!r} not found: not an existing local folder, and the hub "
            f"({os.environ.get('HF_ENDPOINT', 'huggingface.co')}) has no such repository (or it is private)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelResolutionError(f"model {repo_id!r} has no revision {revision!r}") from exc
    except LocalEntryNotFoundError as exc:
        raise TransientError(f"hub unreachable and {repo_id}@{revision or 'main'} is not cached: {exc}") from exc
    # snapshot folders are named by the commit sha they hold
    return folder, folder.name


def _resolve_s3(uri: str, cache_dir: Path) -> Path:
    """Copy an s3://bucket/prefix model folder to a local cache folder."""
    from asr_optimize.store.s3_download import download_prefix

    return download_prefix(uri, cache_dir / slugify_model(uri))


def resolve_model(source: str, revision: str | None = None, cache_dir: Path | None = None) -> ResolvedModel:
    """Pin ``source`` to an exact revision and a local folder, refusing non-CTC models."""
    source = str(source)
    cache = Path(cache_dir or get_settings().cache_root)
    if source.startswith("s3://"):
        folder, kind = _resolve_s3(source, cache), "s3"
        check_ctc_model(folder)  # before hashing: a wrong folder fails at once, however large
        pinned = f"sha256:{sha256_tree(folder)[:16]}"
    elif Path(source).expanduser().exists():
        folder, kind = Path(source).expanduser().resolve(), "local"
        if not folder.is_dir():
            raise ModelResolutionError(f"{folder} is a file; pass the model folder")
        check_ctc_model(folder)
        pinned = f"sha256:{sha256_tree(folder)[:16]}"
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        folder, pinned = _resolve_hub(source, revision, cache_dir)
        kind = "hub"
    else:
        raise ModelResolutionError(f"model {source!r}: no such folder, and not a hub id of the form 'owner/name'")
    if revision and kind != "hub" and not pinned.startswith(revision) and revision != pinned:
        raise ModelResolutionError(
            f"{source} has content revision {pinned}, but revision {revision!r} was requested"
        )
    architecture = check_ctc_model(folder)
    return ResolvedModel(source=source, kind=kind, revision=pinned, local_dir=folder, architecture=architecture)


def load_model(model_dir: Path, dtype: Any = None, attn_implementation: str | None = None) -> Any:
    """Load the CTC model for inference (eval mode), with a clear error for corrupt weights."""
    from transformers import AutoModelForCTC

    architecture = check_ctc_model(model_dir)
    try:
        model, info = AutoModelForCTC.from_pretrained(
            model_dir, trust_remote_code=False, local_files_only=True, dtype=dtype,
            attn_implementation=attn_implementation, output_loading_info=True,
        )
    except Exception as exc:  # safetensors, torch and transformers each raise their own types for bad files
        raise ModelResolutionError(
            f"cannot load weights from {model_dir} (corrupt or incomplete?): {type(exc).__name__}: {exc}"
        ) from exc
    missing = sorted(k for k in info.get("missing_keys", []) if not k.endswith(TRAINING_ONLY_KEYS))
    if missing:
        head = [k for k in missing if k.startswith("lm_head")]
        what = "its CTC head" if head and len(head) == len(missing) else "parts of the network"
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ModelResolutionError(
            f"{model_dir}: config.json declares {architecture}, but the weights lack {what} ({shown}); they would "
            "be initialised at random. Save the fine-tuned model with its CTC head (model.save_pretrained)"
        )
    return model.eval()


def load_processor(model_dir: Path) -> Any:
    """Wav2Vec2Processor from the folder; built from vocab.json + preprocessor config if tokenizer files lack."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    try:
        return Wav2Vec2Processor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError):
        tokenizer = Wav2Vec2CTCTokenizer(
            str(model_dir / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
        )
        if (model_dir / "preprocessor_config.json").is_file():
            extractor = Wav2Vec2FeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        else:
            extractor = Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                return_attention_mask=True,
            )
        return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


SPEED_ONLY_KEY = "asr_optimize_speed_only"
"""Written into the config.json of a random-weight model (``init_random_model``): its transcripts are meaningless, so
the promotion gate's absolute WER ceiling (``GateThresholds.max_wer``) does not apply; parity with the reference
still does."""


def is_speed_only(model_dir: Path) -> bool:
    """True for a random-weight model written by ``asr-optimize init-random`` (marked in its config.json)."""
    try:
        return read_config(Path(model_dir)).get(SPEED_ONLY_KEY) is True
    except ModelResolutionError:
        return False


def init_random_model(config_dir: Path, out_dir: Path, seed: int = 0, overrides: dict | None = None) -> Path:
    """Write a randomly initialised model of the architecture in ``config_dir`` (speed work only).

    The replica of IndicWav2Vec ships config + vocab only: this gives it weights of the real shape.
    """
    import shutil

    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config_dict = {**read_config(config_dir), **(overrides or {})}
    check_config_sizes(config_dict, config_dir)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**config_dict)).eval()
    setattr(model.config, SPEED_ONLY_KEY, True)  # random weights: transcripts are meaningless (see is_speed_only)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in ("vocab.json", "added_tokens.json", "preprocessor_config.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (config_dir / name).is_file():
            shutil.copy(config_dir / name, out_dir / name)
    return out_dir
