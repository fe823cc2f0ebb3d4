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


@app.command()
def run(
    model: Annotated[str, typer.Option(help="hub id, local folder or s3:// URI")] = str(DEFAULT_MODEL),
    revision: Annotated[str | None, typer.Option(help="hub revision (branch, tag or commit sha)")] = None,
    store: Annotated[str, typer.Option(help="model store: a local folder")] = "model_store",
    reports: Annotated[str, typer.Option(help="folder for per-run reports")] = "reports",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    require_tensorrt: bool = False,
) -> None:
    """Run the whole asr-optimize flow once."""
    from asr_optimize.errors import AsrOptimizeError
    from flows.asr_optimize import asr_optimize_flow

    try:
        summary = asr_optimize_flow(model=model, revision=revision, store=store, reports_dir=reports,
                                    device=device, require_tensorrt=require_tensorrt)
    except AsrOptimizeError as exc:
        console.print(f"[bold red]asr-optimize failed:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"[bold green]done[/]: report in {summary.report_folder}")
    for stage, status in summary.stages.items():
        console.print(f"  {stage:<10} {status}")


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
