"""Why was the CUDA-graph variant slow at large batches, and does torch.compile help? (H100 diagnosis run).

Run from the repository root on a GPU host:
``PYTHONPATH=. python3 benchmarks/results/h100-2026-11-24/graphs-compile-diagnosis/diagnose_graphs_compile.py``
(after ``asr-optimize bench`` has written the replica model to ~/.cache/asr-optimize). Output of the 2026-11-24 run:
``diagnose_graphs_compile.txt`` beside this file.
"""

import time
from pathlib import Path

import torch

from asr_optimize.audio.load import make_batch, synthetic_audio
from asr_optimize.model.source import load_model
from asr_optimize.runners.torch_fast import optimize_for_inference

MODEL = Path.home() / ".cache" / "asr-optimize" / "indicwav2vec-hindi-replica-seed0"


def mean_ms(model: torch.nn.Module, x: torch.Tensor, n: int = 10) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            model(x)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1000


def audio(batch: int, seconds: float) -> torch.Tensor:
    return torch.from_numpy(make_batch(synthetic_audio(batch, seconds)).input_values).cuda().half()


def eager(label: str, cudnn_benchmark: bool, fast: bool, batch: int = 16, seconds: float = 10) -> None:
    torch.backends.cudnn.benchmark = cudnn_benchmark
    model = load_model(MODEL).cuda().half()
    if fast:
        optimize_for_inference(model)
    print(f"{label:40s} {batch}x{seconds:g}s {mean_ms(model, audio(batch, seconds)):8.2f} ms", flush=True)


def main() -> None:
    eager("eager fp16", False, False)
    eager("eager fp16 + cudnn.benchmark", True, False)
    eager("fold+im2col, no benchmark", False, True)
    eager("fold+im2col + benchmark", True, True)
    torch.backends.cudnn.benchmark = False
    for batch, seconds in ((64, 10), (1, 1)):
        compiled = torch.compile(load_model(MODEL).cuda().half(), dynamic=False)
        x = audio(batch, seconds)
        start = time.perf_counter()
        mean_ms(compiled, x, 1)
        print("compile s", time.perf_counter() - start, flush=True)
        print(f"{'torch.compile fp16':40s} {batch}x{seconds:g}s {mean_ms(compiled, x):8.2f} ms", flush=True)


if __name__ == "__main__":
    main()
