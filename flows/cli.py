"""The ``asr-optimize`` command line: run the flow, benchmark, inspect capabilities, make test models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from asr_optimize.paths import DEFAULT_MODEL

app = typer.Typer(help="Optimize, verify and deploy wav2vec2 CTC speech models.", no_args_is_help=True)
console = Console()


def parse_cases(text: str) -> list:
    """'1x1,16x10' -> [BenchCase(batch=1, seconds=1), BenchCase(batch=16, seconds=10)]."""
    from tasks.benchmark import BenchCase

    cases = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        batch, _, seconds = item.lower().rstrip("s").partition("x")
        try:
            cases.append(BenchCase(batch=int(batch), seconds=float(seconds)))
        except ValueError as exc:
            raise typer.BadParameter(f"benchmark case {item!r}: expected BATCHxSECONDS such as 16x10") from exc
    return cases


@app.command()
def run(
    model: Annotated[str, typer.Option(help="hub id, local folder or s3:// URI")] = str(DEFAULT_MODEL),
    revision: Annotated[str | None, typer.Option(help="hub revision (branch, tag or commit sha)")] = None,
    store: Annotated[str, typer.Option(help="a folder, s3://bucket/prefix, or block:<name>")] = "model_store",
    reports: Annotated[str, typer.Option(help="folder for per-run reports")] = "reports",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    bench_cases: Annotated[str, typer.Option(help="batch x seconds list, e.g. '1x1,1x5,4x5'")] = "1x1,1x5,4x5",
    iterations: Annotated[int, typer.Option(help="timed iterations per benchmark case")] = 20,
    require_tensorrt: bool = False,
) -> None:
    """Run the whole asr-optimize flow once."""
    from asr_optimize.errors import AsrOptimizeError
    from flows.asr_optimize import PipelineOptions, asr_optimize_flow
    from tasks.benchmark import BenchmarkOptions

    options = PipelineOptions(benchmark=BenchmarkOptions(cases=parse_cases(bench_cases), iterations=iterations))
    try:
        summary = asr_optimize_flow(model=model, revision=revision, store=store, reports_dir=reports,
                                    device=device, require_tensorrt=require_tensorrt, options=options)
    except AsrOptimizeError as exc:
        console.print(f"[bold red]asr-optimize failed:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"[bold green]done[/]: report in {summary.report_folder}")
    for stage, status in summary.stages.items():
        console.print(f"  {stage:<10} {status}")


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cuda (the suite's purpose) or cpu")] = "cuda",
    model: Annotated[str | None, typer.Option(help="model to time; default: the replica architecture")] = None,
    cases: Annotated[str, typer.Option(help="batch x seconds list")] = "1x1,1x10,16x10,64x10",
    iterations: int = 30,
    store: str = "model_store",
    out: Annotated[Path | None, typer.Option(help="output folder (default reports/bench-<time>)")] = None,
    only: Annotated[str, typer.Option(help="comma list: keep runners whose label contains one")] = "",
    skip_accuracy: bool = False,
    prepare_only: Annotated[bool, typer.Option(help="only build/reuse the artifacts")] = False,
    compile: Annotated[bool, typer.Option(help="also time torch.compile + CUDA graphs (slow to build)")] = False,
) -> None:
    """GPU benchmark: eager fp32 baseline and every artifact, side by side, plus accuracy on the demo model."""
    from asr_optimize.errors import AsrOptimizeError
    from tasks.bench_suite import BenchSuiteOptions, run_suite

    try:
        summary = run_suite(BenchSuiteOptions(
            model=model, device=device, cases=parse_cases(cases), iterations=iterations, store=store, out_dir=out,
            only=[o for o in only.split(",") if o], skip_accuracy=skip_accuracy, prepare_only=prepare_only,
            compile=compile,
        ))
    except AsrOptimizeError as exc:
        console.print(f"[bold red]asr-optimize bench failed:[/] {exc}")
        raise typer.Exit(2) from exc
    bench_md = Path(summary["out_dir"]) / "bench.md"
    console.print(bench_md.read_text() if bench_md.is_file() else summary)


@app.command()
def capabilities() -> None:
    """Print what this machine can run (GPU, ONNX Runtime providers, TensorRT, tritonserver)."""
    from asr_optimize.capabilities import detect

    console.print_json(detect().model_dump_json())


@app.command("init-random")
def init_random(
    config_dir: Path, out_dir: Path, seed: int = 0,
    overrides: Annotated[str, typer.Option(help="JSON dict of config overrides")] = "{}",
) -> None:
    """Write a randomly initialised model of the architecture in CONFIG_DIR (for speed measurements only)."""
    from asr_optimize.model_source import init_random_model

    init_random_model(config_dir, out_dir, seed=seed, overrides=json.loads(overrides))
    console.print(f"random-weight model written to {out_dir}")


if __name__ == "__main__":
    app()
