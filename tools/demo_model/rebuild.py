"""Regenerate the bundled demo model and test set in one command.

    python -m tools.demo_model.rebuild --work .demo-work

Steps: texts for train/dev/test (seed 0) -> the test set (FLAC) into ``assets/demo-testset`` with the
train/dev text list -> train/dev audio (WAV) under ``--work`` -> training -> the model folder into
``assets/demo-model`` (its README.md is kept) -> CER/WER on the test set. Needs ``espeak-ng`` and
``wordfreq``; training wants a CUDA GPU (about 8 minutes on an H100; CPU works but takes hours).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

from asr_optimize.paths import ASSETS
from tools.demo_model import evaluate, make_data, train

TRAIN_DEV_TEXTS = "train_dev_texts.txt.gz"


def write_train_dev_texts(text_dir: Path, testset_dir: Path) -> Path:
    """Store the train+dev texts (gzip, one a line) beside the test set, for the disjointness check."""
    texts = []
    for split in ("train", "dev"):
        for line in (text_dir / f"{split}.text.jsonl").read_text(encoding="utf-8").splitlines():
            texts.append(json.loads(line)["text"])
    path = testset_dir / TRAIN_DEV_TEXTS
    path.write_bytes(gzip.compress(("\n".join(texts) + "\n").encode("utf-8"), compresslevel=9, mtime=0))
    return path


def install_model(run_model: Path, target: Path) -> None:
    """Replace the model files in ``target`` with a fresh training run's, keeping the model card."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        if old.name != "README.md":
            old.unlink()
    for new in run_model.iterdir():
        shutil.copy2(new, target / new.name)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(".demo-work"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-dev", type=int, default=200)
    p.add_argument("--n-test", type=int, default=110)
    p.add_argument("--max-steps", type=int, default=12_000)
    p.add_argument("--time-budget", type=float, default=450.0, help="training seconds (0: run all steps)")
    p.add_argument("--espeak", help="espeak-ng binary (default: $ESPEAK_NG or PATH)")
    p.add_argument("--skip-testset", action="store_true", help="keep the committed test set as it is")
    p.add_argument("--skip-train", action="store_true", help="only regenerate the texts and the test set")
    a = p.parse_args(argv)

    text_dir = a.work / "text"
    paths = make_data.make_text_manifests(text_dir, a.n_train, a.n_dev, a.n_test, a.seed)
    testset = ASSETS / "demo-testset"
    if not a.skip_testset:
        for old in (testset / "audio").glob("*.flac"):
            old.unlink()
        make_data.synthesize_manifest(paths["test"], testset, "manifest.jsonl", "flac", a.espeak)
        write_train_dev_texts(text_dir, testset)
    if a.skip_train:
        return
    data = a.work / "data"
    for split in ("train", "dev"):
        make_data.synthesize_manifest(paths[split], data, f"{split}.jsonl", "wav", a.espeak)
    run = a.work / "run"
    train.main(
        [
            "--train",
            str(data / "train.jsonl"),
            "--dev",
            str(data / "dev.jsonl"),
            "--test",
            str(testset / "manifest.jsonl"),
            "--out",
            str(run),
            "--max-steps",
            str(a.max_steps),
            "--time-budget",
            str(a.time_budget),
            "--seed",
            str(a.seed),
        ]
    )
    install_model(run / "model", ASSETS / "demo-model")
    evaluate.main(["--model", str(ASSETS / "demo-model"), "--manifest", str(testset / "manifest.jsonl")])


if __name__ == "__main__":
    main()
