"""Fetch a finished asr-optimize/prod run's evidence from the Prefect API: final states, stage table, report.

Used by ``benchmarks/gpu/prod_run.sh`` on the GPU machine; writes ``prod_run.json`` (flow run + task runs, their
final states and timings) and copies the run's report files into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import httpx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True, help="the deployment's reports folder")
    args = parser.parse_args()
    api = os.environ["PREFECT_API_URL"]
    finished = {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]}}}
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": finished, "sort": "START_TIME_DESC", "limit": 5},
                      timeout=30).json()
    prod = [r for r in runs if r.get("deployment_id")]
    if not prod:
        print("no deployment run found")
        return 1
    run = prod[0]
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}},
                       timeout=30).json()
    evidence = {
        "flow_run": {k: run.get(k) for k in ("name", "state_type", "state_name", "start_time", "end_time",
                                             "total_run_time", "parameters")},
        "task_runs": sorted(({"name": t["name"], "state": t["state_type"], "seconds": t.get("total_run_time"),
                              "tags": t.get("tags")} for t in tasks), key=lambda t: t["name"]),
    }
    (args.out / "prod_run.json").write_text(json.dumps(evidence, indent=2, default=str))
    print(json.dumps(evidence["flow_run"], indent=1, default=str))
    for t in evidence["task_runs"]:
        print(f"  {t['name']:<32} {t['state']:<10} {t['seconds']}")
    report = args.reports / run["name"]
    for name in ("report.md", "stages.csv", "benchmarks.csv", "accuracy.csv"):
        if (report / name).is_file():
            shutil.copy(report / name, args.out / name)
    return 0 if run["state_type"] == "COMPLETED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
