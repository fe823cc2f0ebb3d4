import sys, time, torch
sys.path.insert(0, "/tmp/repo")
from pathlib import Path
from asr_optimize.model_source import load_model
from asr_optimize.runners.torch_fast import optimize_for_inference
from asr_optimize.audio import make_batch, synthetic_audio
MD = Path("/root/.cache/asr-optimize/indicwav2vec-hindi-replica-seed0")
def t(model, x, n=10):
    with torch.inference_mode():
        for _ in range(3): model(x)
        torch.cuda.synchronize(); s = time.perf_counter()
        for _ in range(n): model(x)
        torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1000
def run(label, bench, fast, B=16, S=10):
    torch.backends.cudnn.benchmark = bench
    m = load_model(MD).cuda().half()
    if fast: optimize_for_inference(m)
    x = torch.from_numpy(make_batch(synthetic_audio(B, S)).input_values).cuda().half()
    print(f"{label:40s} {B}x{S}s {t(m, x):8.2f} ms", flush=True)
    return m
run("eager fp16", False, False)
run("eager fp16 + cudnn.benchmark", True, False)
run("fold+im2col, no benchmark", False, True)
m = run("fold+im2col + benchmark", True, True)
torch.backends.cudnn.benchmark = False
for B, S in ((64, 10), (1, 1)):
    mc = torch.compile(load_model(MD).cuda().half(), dynamic=False)
    x = torch.from_numpy(make_batch(synthetic_audio(B, S)).input_values).cuda().half()
    s = time.perf_counter(); t(mc, x, 1); print("compile s", time.perf_counter() - s, flush=True)
    print(f"{'torch.compile fp16 (eager attn default)':40s} {B}x{S}s {t(mc, x):8.2f} ms", flush=True)
