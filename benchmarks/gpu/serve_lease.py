"""Driver of ``serve_lease.sh`` on the GPU machine: GPU Triton repository, serve-bench sweep, reload soak.

Stages (each fits one device command of <= 10 min; state lives in --work, which lasts while the machine is warm):
  prepare-fused  the replica and its fused fp16 engine folder (the artifact for repo/soak instead of the ONNX)
  repo   start the bundled tritonserver on the GPU, deploy the replica fp16 artifact as v1 (GPU instances, length
         buckets, dynamic batching) through the real hot_swap, stop it; the repository stays in <work>/repo
  bench  start the server on that repository, run serve-bench (pipeline + acoustic; 1 s and 10 s; 1/4/16/64)
  soak   start the server, 20 hot-swaps between the artifact and a copy under load, GPU memory after each swap

The replica has random weights: every result is labelled speed-only and the canary gate is opened (a random
model's transcripts are noise; the gate's job is tested on CPU with the demo model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from asr_optimize.gate import GateThresholds
from asr_optimize.serving.loadgen import ServeBenchOptions, demo_audio, serve_bench
from asr_optimize.serving.soak import SoakOptions, soak
from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap, http_client, pipeline_transcribe
from asr_optimize.triton.server import TritonServer

SPEED_ONLY = GateThresholds(max_wer_delta=100.0, max_cer_delta=None, min_identical_fraction=None)


def batching(args: argparse.Namespace) -> repo_mod.BatchingOptions:
    return repo_mod.BatchingOptions(
        max_batch_size=64, preferred_batch_sizes=[4, 8, 16, 32, 64], max_queue_delay_us=args.queue_delay_us,
        instance_kind=args.instance_kind, instance_count=args.instances, intra_op_threads=0, io_binding=True,
        gpu_input_tensors=os.environ.get("GPU_INPUTS", "1") == "1",
        cuda_graphs=args.cuda_graphs, buckets_s=[1.0, 2.0, 5.0, 10.0, 20.0],
        fused_profile_every=int(os.environ.get("PROFILE_EVERY", "0")),
        pipeline_instance_count=args.pipeline_instances, pipeline_max_queue_delay_us=100,
    )


def swap_options(args: argparse.Namespace) -> SwapOptions:
    return SwapOptions(batching=batching(args), thresholds=SPEED_ONLY, grace_s=1.0, load_timeout_s=600)


def canary(limit: int = 8) -> list:
    from asr_optimize.eval_data import EvalSource, load_eval_set

    return load_eval_set(EvalSource(max_samples=limit)).utterances


def server(args: argparse.Namespace, load: bool) -> TritonServer:
    models = [repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME] if load else []
    extra = os.environ.get("SERVER_ARGS", "").split()  # e.g. --cuda-memory-pool-byte-size=0:1073741824
    return TritonServer(args.work / "repo", load=models, work_dir=args.work / "server", log_verbose=0, extra_args=extra)


def stage_prepare_fused(args: argparse.Namespace) -> None:
    """The replica (random weights) and its fused fp16 engine folder: the artifact the fused-engine stage builds."""
    from asr_optimize.model_source import init_random_model
    from asr_optimize.paths import REPLICA_CONFIG
    from asr_optimize.runners.fused_engine import FusedEngineOptions, build_fused_engine

    if not (args.model_dir / "config.json").is_file():
        init_random_model(REPLICA_CONFIG, args.model_dir, seed=0)
    engine = args.work / "engine-fp16"
    if not (engine / "engine.json").is_file():
        metrics = build_fused_engine(args.model_dir, engine, FusedEngineOptions(precision="fp16"))
        print("fused fp16 engine:", {k: v for k, v in metrics.items() if k != "folded"}, flush=True)
    (args.work / "artifact.txt").write_text(str(engine))


def reference_runner(artifact: Path):
    """The in-process runner of the artifact (the canary's reference): fused engine folder or ONNX file."""
    if artifact.is_dir():
        import torch

        from asr_optimize.runners.fused_engine import FusedRunner

        if torch.cuda.is_available():
            return FusedRunner(artifact, device="cuda", precision="fp16")
        return FusedRunner(artifact, device="cpu", precision="fp32")  # a dry run of this script on a CPU
    from asr_optimize.runners.ort_runner import OrtRunner, available_providers

    return OrtRunner(artifact, "cuda" if "cuda" in available_providers() else "cpu", precision="fp16")


def stage_repo(args: argparse.Namespace) -> None:
    artifact = Path((args.work / "artifact.txt").read_text().strip())
    shutil.rmtree(args.work / "repo", ignore_errors=True)
    from asr_optimize.transcribe import transcribe

    utts = canary()
    waves = [u.audio for u in utts]
    runner = reference_runner(artifact)
    reference, _ = transcribe(runner, waves, args.model_dir)
    runner.close()
    print(f"in-process reference ({runner.label or type(runner).__name__}):", reference[:2], flush=True)
    with server(args, load=False) as running:
        # random weights: the canary runs for real, the gate is open (SPEED_ONLY); accuracy is tested on CPU
        decision = hot_swap(running.repository, artifact, args.model_dir,
                            CanarySet([u.id for u in utts], waves, list(reference)),
                            running.http_url, swap_options(args), source=f"replica fp16: {artifact}")
        (args.out / "deploy.md").write_text(decision.markdown() + "\n")
        print(decision.summary(), flush=True)
        if not decision.promoted:
            raise SystemExit(f"deploy failed: {decision.summary()}\n{running.log_tail()}")
        texts = pipeline_transcribe(http_client(running.http_url), repo_mod.DEFAULT_PIPELINE_NAME,
                                    [u.audio for u in utts[:2]])
        print("pipeline answers (random weights, speed only):", texts, flush=True)
    for name in (repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME):
        shutil.copy2(args.work / "repo" / name / "config.pbtxt", args.out / f"{name}.config.pbtxt")


def stage_bench(args: argparse.Namespace) -> None:
    targets = os.environ.get("TARGETS", "pipeline acoustic").split()
    # CLIENTS=N: the load generator in N processes (one Python process can be the limit at high concurrency)
    opts = ServeBenchOptions(concurrency=args.concurrency, targets=targets, durations_s=args.durations,
                             window_s=args.window_s, max_windows=8, max_level_s=60, label=args.label,
                             speed_only=True, processes=int(os.environ.get("CLIENTS", "1")))
    with server(args, load=True) as running:
        try:
            result = serve_bench(running.grpc_url, demo_audio(16), opts, args.out / "serve-bench", device=args.device,
                                 progress=lambda r: print(json.dumps(r.model_dump(exclude={"errors"})), flush=True))
            print(result.markdown(), flush=True)
        finally:
            (args.out / "tritonserver-bench.log").write_text(running.log_tail(200_000))


def stage_soak(args: argparse.Namespace) -> None:
    artifact = Path((args.work / "artifact.txt").read_text().strip())
    copy = args.work / "artifact-b" / artifact.name  # a second version: same content, another store path
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if artifact.is_dir() else shutil.copy2)(artifact, copy)
    utts = canary()
    with server(args, load=True) as running:
        try:
            waves = [u.audio for u in utts]
            reference = pipeline_transcribe(http_client(running.http_url), repo_mod.DEFAULT_PIPELINE_NAME, waves)
            opts = SoakOptions(swaps=args.swaps, concurrency=args.soak_concurrency,
                               steady_s=float(os.environ.get("STEADY_S", "10")),
                               pause_s=float(os.environ.get("PAUSE_S", "2")),
                               swap=swap_options(args), label=args.label)
            result = soak(running.repository, (copy, artifact), args.model_dir,
                          CanarySet([u.id for u in utts], waves, reference), running.http_url, running.grpc_url, opts,
                          args.out / "soak", progress=lambda r: print(r.model_dump_json(), flush=True))
            print(result.markdown(), flush=True)
        finally:
            (args.out / "tritonserver-soak.log").write_text(running.log_tail(200_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["prepare-fused", "repo", "bench", "soak"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True, help="the replica model folder (config, vocab)")
    parser.add_argument("--device", default="")
    parser.add_argument("--label", default=os.environ.get("LABEL", "replica fp16, ORT CUDA (speed only)"))
    parser.add_argument("--instance-kind", default=os.environ.get("INSTANCE_KIND", "KIND_GPU"),
                        choices=["KIND_GPU", "KIND_CPU"], help="KIND_CPU only for a dry run of this script on a CPU")
    parser.add_argument("--instances", type=int, default=int(os.environ.get("INSTANCES", "2")))
    parser.add_argument("--pipeline-instances", type=int, default=int(os.environ.get("PIPELINE_INSTANCES", "4")))
    parser.add_argument("--queue-delay-us", type=int, default=int(os.environ.get("QUEUE_DELAY_US", "100")))
    parser.add_argument("--cuda-graphs", action="store_true", default=os.environ.get("CUDA_GRAPHS") == "1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--durations", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--soak-concurrency", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        {"prepare-fused": stage_prepare_fused, "repo": stage_repo, "bench": stage_bench,
         "soak": stage_soak}[args.stage](args)
    except BaseException:
        (args.out / f"{args.stage}-error.txt").write_text(traceback.format_exc())
        raise
    finally:
        print(f"stage {args.stage}: {time.time() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
