"""Put one artifact behind the bundled tritonserver for a serving benchmark, and swap it under load.

What the ``asr-optimize`` CLI does not do on its own: deploy a given artifact (an ONNX graph or a fused engine folder)
into a Triton repository with chosen batching options, keep that server up for ``asr-optimize serve-bench --url``,
and run the reload soak. Used by ``serve.sh`` and ``soak.sh``; run from the repository root:

  python benchmarks/gpu/triton_deploy.py build-fused MODEL_DIR ENGINE_DIR
  python benchmarks/gpu/triton_deploy.py --repository REPO [batching options] deploy --artifact A --model-dir M --out O
  python benchmarks/gpu/triton_deploy.py --repository REPO [batching options] serve --url-file F --log L
  python benchmarks/gpu/triton_deploy.py --repository REPO [batching options] soak --artifact A --model-dir M --out O

Every deployment goes through the product's own ``hot_swap`` (canary, promotion, rollback). ``--speed-only`` opens the
canary gate, for random-weight models (the replica) whose transcripts are noise; accuracy is the gate's job elsewhere.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)
STATE: dict[str, Any] = {}


@app.callback()
def common(
    repository: Annotated[Path, typer.Option(help="the Triton model repository this run uses")] = Path(
        "reports/gpu-work/triton-repo"),
    instances: Annotated[int, typer.Option(help="acoustic model instances per GPU", min=1)] = 1,
    pipeline_instances: Annotated[int, typer.Option(help="instances of the `asr` pipeline model", min=1)] = 4,
    queue_delay_us: Annotated[int, typer.Option(help="dynamic batching: max queue delay (us)", min=0)] = 200,
    gpu_inputs: Annotated[bool, typer.Option("--gpu-inputs/--host-inputs",
                                             help="request tensors stay on the GPU (FORCE_CPU_ONLY_INPUT_TENSORS "
                                                  "no) or arrive in host memory")] = True,
    cuda_graphs: Annotated[bool, typer.Option(help="ONNX Runtime artifacts: CUDA graphs in the server")] = False,
    profile_every: Annotated[int, typer.Option(help="fused engine: log the execute phases every N batches "
                                                    "into the server log (0: off)", min=0)] = 0,
    instance_kind: Annotated[str, typer.Option(help="KIND_GPU, or KIND_CPU for a dry run on a CPU")] = "KIND_GPU",
    speed_only: Annotated[bool, typer.Option(help="open the canary gate (random-weight model)")] = False,
    one_hop: Annotated[bool, typer.Option("--one-hop/--bls", help="fused engine: run it inside the `asr` model "
                                          "(one hop) or call the acoustic model by BLS")] = True,
    server_arg: Annotated[list[str] | None, typer.Option(
        help="extra tritonserver argument, repeatable (e.g. --cuda-memory-pool-byte-size=0:1073741824)")] = None,
) -> None:
    """Options shared by every command that deploys or serves."""
    from asr_optimize.quality.gate import GateThresholds
    from asr_optimize.triton import repository as repo_mod
    from asr_optimize.triton.hotswap import SwapOptions

    batching = repo_mod.BatchingOptions(
        max_batch_size=64, preferred_batch_sizes=[4, 8, 16, 32, 64], max_queue_delay_us=queue_delay_us,
        instance_kind=instance_kind, instance_count=instances, intra_op_threads=0, io_binding=True,
        gpu_input_tensors=gpu_inputs, cuda_graphs=cuda_graphs, buckets_s=[1.0, 2.0, 5.0, 10.0, 20.0],
        fused_profile_every=profile_every, pipeline_instance_count=pipeline_instances,
        pipeline_max_queue_delay_us=100, one_hop=one_hop,
    )
    thresholds = (GateThresholds(max_wer_delta=100.0, max_wer=None, max_cer_delta=None, min_identical_fraction=None)
                  if speed_only else GateThresholds())
    STATE.update(repository=repository.resolve(), server_args=list(server_arg or []),
                 swap=SwapOptions(batching=batching, thresholds=thresholds, grace_s=1.0, load_timeout_s=600))


def _server(load: bool) -> Any:
    from asr_optimize.triton import repository as repo_mod
    from asr_optimize.triton.server import TritonServer

    root: Path = STATE["repository"]
    models = [repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME] if load else []
    return TritonServer(root, load=models, work_dir=root.parent / f"{root.name}-server", log_verbose=0,
                        extra_args=STATE["server_args"])


def _canary(limit: int = 8) -> list[Any]:
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set

    return load_eval_set(EvalSource(max_samples=limit)).utterances


def _reference_runner(artifact: Path) -> Any:
    """The in-process runner of the artifact (the canary's reference): a fused engine folder or an ONNX file."""
    if artifact.is_dir():
        import torch

        from asr_optimize.runners.fused_engine import FusedRunner

        if torch.cuda.is_available():
            return FusedRunner(artifact, device="cuda", precision="fp16")
        return FusedRunner(artifact, device="cpu", precision="fp32")
    from asr_optimize.runners.ort_runner import OrtRunner, available_providers

    return OrtRunner(artifact, "cuda" if "cuda" in available_providers() else "cpu", precision="fp16")


@app.command("build-fused")
def build_fused(
    model_dir: Path, engine_dir: Path,
    precision: Annotated[str, typer.Option(help="fp16 (the precision the python backend serves)")] = "fp16",
) -> None:
    """Build the fused engine folder of MODEL_DIR into ENGINE_DIR (kept when it already exists)."""
    from asr_optimize.runners.fused_engine import FusedEngineOptions, build_fused_engine

    if (engine_dir / "engine.json").is_file():
        typer.echo(f"fused {precision} engine: reusing {engine_dir}")
        return
    metrics = build_fused_engine(model_dir, engine_dir, FusedEngineOptions(precision=precision))
    typer.echo(f"fused {precision} engine: {({k: v for k, v in metrics.items() if k != 'folded'})}")


@app.command()
def deploy(
    artifact: Annotated[Path, typer.Option(help="ONNX file or fused engine folder")],
    model_dir: Annotated[Path, typer.Option(help="the model folder (config, vocabulary)")],
    out: Annotated[Path, typer.Option(help="results folder: deploy.md and the generated configs")],
) -> None:
    """Start from an empty repository and deploy ARTIFACT as version 1 through hot_swap (canary, promotion)."""
    from asr_optimize.transcribe import transcribe
    from asr_optimize.triton import repository as repo_mod
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import CanarySet, hot_swap, pipeline_transcribe

    root: Path = STATE["repository"]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    utts = _canary()
    waves = [u.audio for u in utts]
    runner = _reference_runner(artifact)
    try:
        reference = transcribe(runner, waves, model_dir).texts
    finally:
        runner.close()
    with _server(load=False) as running:
        decision = hot_swap(running.repository, artifact.resolve(), model_dir,
                            CanarySet([u.id for u in utts], waves, list(reference)), running.http_url,
                            STATE["swap"], source=f"benchmark artifact {artifact.name}")
        (out / "deploy.md").write_text(decision.markdown() + "\n", encoding="utf-8")
        typer.echo(decision.summary())
        if not decision.promoted:
            typer.echo(running.log_tail(), err=True)
            raise typer.Exit(1)
        texts = pipeline_transcribe(http_client(running.http_url), repo_mod.DEFAULT_PIPELINE_NAME, waves[:2])
        typer.echo(f"pipeline answers: {texts}")
    for name in (repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME):
        shutil.copy2(root / name / "config.pbtxt", out / f"{name}.config.pbtxt")


@app.command()
def serve(
    url_file: Annotated[Path, typer.Option(help="written with the gRPC host:port once every model is ready")],
    log: Annotated[Path, typer.Option(help="the server log is copied here when the server stops")],
    timeout_s: Annotated[float, typer.Option(help="seconds to wait for the models to load")] = 600.0,
) -> None:
    """Serve the repository until SIGTERM or SIGINT (for `asr-optimize serve-bench --url`)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = _server(load=True)
    try:
        server.start(timeout_s)
        url_file.write_text(server.grpc_url + "\n")
        typer.echo(f"serving {STATE['repository']} at {server.grpc_url} (HTTP {server.http_url})")
        while not stop.wait(1.0):
            if not server.running:
                typer.echo("tritonserver exited", err=True)
                raise typer.Exit(1)
    finally:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(server.log_tail(50_000_000), encoding="utf-8")
        server.cleanup()
        url_file.unlink(missing_ok=True)


@app.command()
def soak(
    artifact: Annotated[Path, typer.Option(help="the deployed artifact; a copy of it is the other version")],
    model_dir: Annotated[Path, typer.Option(help="the model folder (config, vocabulary)")],
    out: Annotated[Path, typer.Option(help="results folder")],
    swaps: Annotated[int, typer.Option(min=1)] = 20,
    concurrency: Annotated[int, typer.Option(help="requests kept in flight during the soak", min=1)] = 8,
    steady_s: Annotated[float, typer.Option(help="load before the first and after the last swap (s)")] = 5.0,
    pause_s: Annotated[float, typer.Option(help="load between swaps (s)")] = 1.0,
    label: str = "",
) -> None:
    """SWAPS hot swaps between ARTIFACT and a copy while CONCURRENCY requests stay in flight; GPU memory after each."""
    from asr_optimize.loadtest.soak import SoakOptions
    from asr_optimize.loadtest.soak import soak as run_soak
    from asr_optimize.triton import repository as repo_mod
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import CanarySet, pipeline_transcribe

    artifact = artifact.resolve()
    copy = STATE["repository"].parent / f"{STATE['repository'].name}-copy" / artifact.name
    if not copy.exists():  # a second version: the same content at another path
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if artifact.is_dir() else shutil.copy2)(artifact, copy)
    out.mkdir(parents=True, exist_ok=True)
    utts = _canary()
    waves = [u.audio for u in utts]
    start = time.time()
    with _server(load=True) as running:
        try:
            reference = pipeline_transcribe(http_client(running.http_url), repo_mod.DEFAULT_PIPELINE_NAME, waves)
            opts = SoakOptions(swaps=swaps, concurrency=concurrency, steady_s=steady_s, pause_s=pause_s,
                               swap=STATE["swap"], label=label)
            result = run_soak(running.repository, (copy, artifact), model_dir,
                              CanarySet([u.id for u in utts], waves, reference), running.http_url,
                              running.grpc_url, opts, out / "soak",
                              progress=lambda r: typer.echo(json.dumps(r.model_dump(mode="json"))))
            typer.echo(result.markdown())
        finally:
            (out / "tritonserver-soak.log").write_text(running.log_tail(200_000), encoding="utf-8")
    typer.echo(f"soak: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app()
