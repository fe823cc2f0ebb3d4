"""Collect the evidence of the latest finished deployment run from the Prefect API and its report folder.

Used by ``prod-run.sh`` (``PREFECT_API_URL`` set): writes ``prod_run.json`` (the flow run, every task run, their final
states and durations) into ``--out`` and copies the run's ``report.md``, ``stages.csv``, ``benchmarks.csv`` and
``accuracy.csv`` beside it. Exit code 0 only when the flow run COMPLETED.

  python benchmarks/gpu/collect_prod_run.py --out DIR --reports reports
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import httpx
import typer

FINAL = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
REPORT_FILES = ("report.md", "stages.csv", "benchmarks.csv", "accuracy.csv")


def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    reports: Annotated[Path, typer.Option(help="the deployment's reports folder (its `reports_dir`)")],
    api: Annotated[str, typer.Option(envvar="PREFECT_API_URL", help="Prefect API URL")] = "http://127.0.0.1:4200/api",
) -> None:
    """Write prod_run.json and copy the report files of the latest finished deployment run."""
    runs = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
        "flow_runs": {"state": {"type": {"any_": FINAL}}}, "sort": "START_TIME_DESC", "limit": 5}).json()
    deployed = [r for r in runs if r.get("deployment_id")]
    if not deployed:
        typer.echo("no finished deployment run found", err=True)
        raise typer.Exit(1)
    run = deployed[0]
    tasks = httpx.post(f"{api}/task_runs/filter", timeout=30,
                       json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
    evidence = {
        "flow_run": {k: run.get(k) for k in ("name", "state_type", "state_name", "start_time", "end_time",
                                             "total_run_time", "parameters")},
        "task_runs": sorted(({"name": t["name"], "state": t["state_type"], "seconds": t.get("total_run_time"),
                              "tags": t.get("tags")} for t in tasks), key=lambda t: t["name"]),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "prod_run.json").write_text(json.dumps(evidence, indent=2, default=str), encoding="utf-8")
    typer.echo(json.dumps(evidence["flow_run"], indent=1, default=str))
    for task in evidence["task_runs"]:
        typer.echo(f"  {task['name']:<32} {task['state']:<10} {task['seconds']}")
    folder = reports / run["name"]
    for name in REPORT_FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, out / name)
    if run["state_type"] != "COMPLETED":
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
