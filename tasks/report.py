"""Stage 9, report: CSV a person can open, altair charts (PNG + HTML), and Prefect artifacts for the UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from tasks.common import StageResult, get_logger, in_prefect_run, stage_task

STAGE = "report"


def save_chart(chart: alt.Chart, out_dir: Path, name: str) -> list[str]:
    """Save a chart as HTML and PNG (PNG through vl-convert); a PNG failure is logged, not fatal."""
    files = [f"{name}.html"]
    chart.save(str(out_dir / f"{name}.html"))
    try:
        chart.save(str(out_dir / f"{name}.png"), scale_factor=1.5)
        files.append(f"{name}.png")
    except Exception as exc:  # vl-convert missing or failing must not lose the rest of the report
        get_logger().warning("report: PNG for %s not written: %s", name, exc)
    return files


def benchmark_charts(table: pd.DataFrame, out_dir: Path) -> list[str]:
    ok = table[table["status"] == "ok"] if "status" in table else table
    if ok.empty:
        return []
    latency = alt.Chart(ok).mark_bar().encode(
        x=alt.X("p50_ms:Q", title="p50 latency (ms)"), y=alt.Y("runner:N", title=None), color="runner:N",
        row=alt.Row("case:N", title="batch x audio"), tooltip=["runner", "case", "p50_ms", "p99_ms", "x_real_time"],
    ).properties(width=420, title="Latency per backend (lower is better)")
    speed = alt.Chart(ok).mark_bar().encode(
        x=alt.X("speedup_vs_baseline:Q", title="speed-up vs PyTorch eager fp32 (same run)"),
        y=alt.Y("runner:N", title=None), color="runner:N", row=alt.Row("case:N", title="batch x audio"),
        tooltip=["runner", "case", "speedup_vs_baseline", "x_real_time"],
    ).properties(width=420, title="Speed-up over the eager fp32 baseline")
    return save_chart(latency, out_dir, "benchmark_latency") + save_chart(speed, out_dir, "benchmark_speedup")


def profile_chart(operators: pd.DataFrame, out_dir: Path, metric: str) -> list[str]:
    chart = alt.Chart(operators.head(15)).mark_bar().encode(
        x=alt.X(f"{metric}:Q", title=f"{metric} per forward"), y=alt.Y("operator:N", sort="-x", title=None),
        tooltip=["operator", "calls", metric],
    ).properties(width=420, title="PyTorch reference: top operators")
    return save_chart(chart, out_dir, "profile_operators")


def _markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    present = [c for c in columns if c in frame]
    if frame.empty or not present:
        return "_none_\n"
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for _, row in frame[present].iterrows():
        cells = [f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path, run_info: dict[str, Any], stages: list[StageResult], benchmarks: pd.DataFrame,
    profile_csv: Path | None, accuracy: pd.DataFrame | None = None, extra_sections: list[str] | None = None,
) -> dict[str, Any]:
    """Write the run's report folder and return what was written (for the manifest and the UI)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    rows = [{"stage": s.stage, "status": s.status, "reason": s.reason or "", "seconds": s.seconds,
             "artifact": s.location or ""} for s in stages]
    rows.append({"stage": STAGE, "status": "ok", "reason": "", "seconds": 0.0, "artifact": str(out_dir)})
    stage_rows = pd.DataFrame(rows)
    stage_rows.to_csv(out_dir / "stages.csv", index=False)
    files.append("stages.csv")
    if not benchmarks.empty:
        benchmarks.to_csv(out_dir / "benchmarks.csv", index=False)
        files += ["benchmarks.csv", *benchmark_charts(benchmarks, out_dir)]
    if profile_csv is not None and profile_csv.is_file():
        operators = pd.read_csv(profile_csv)
        operators.to_csv(out_dir / "profile_operators.csv", index=False)
        metric = "self_device_ms" if operators.get("self_device_ms", pd.Series([0])).sum() > 0 else "self_cpu_ms"
        files += ["profile_operators.csv", *profile_chart(operators, out_dir, metric)]
    if accuracy is not None and not accuracy.empty:
        accuracy.to_csv(out_dir / "accuracy.csv", index=False)
        files.append("accuracy.csv")

    md = [f"# asr-optimize run `{run_info.get('run_name', '')}`", ""]
    md += [f"- **{k}**: {v}" for k, v in run_info.items()]
    md += ["", "## Stages", _markdown_table(stage_rows, ["stage", "status", "reason", "seconds"])]
    if accuracy is not None and not accuracy.empty:
        shown = accuracy.copy()
        for column in ("wer", "cer", "identical_transcripts", "cer_vs_reference"):
            if column in shown:
                shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.2%}")
        md += ["## Accuracy (WER/CER with the Vistaar Hindi normalization; gate vs the fp32 reference)",
               _markdown_table(shown, list(shown.columns))]
    if not benchmarks.empty:
        ok = benchmarks[benchmarks["status"] == "ok"]
        md += ["## Benchmarks (ratios against PyTorch eager fp32 measured in this run)",
               _markdown_table(ok, ["runner", "case", "p50_ms", "p90_ms", "p99_ms", "x_real_time",
                                    "speedup_vs_baseline", "peak_memory_mb"])]
        not_run = benchmarks[benchmarks["status"] != "ok"].drop_duplicates("runner")
        if not not_run.empty:
            md += ["### Backends not measured", _markdown_table(not_run, ["runner", "status", "reason"])]
    md += extra_sections or []
    md += ["", "Files: " + ", ".join(files)]
    text = "\n".join(md)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    files.append("report.md")
    return {"folder": str(out_dir), "files": files, "markdown": text, "stages": stage_rows}


def publish_prefect_artifacts(report: dict[str, Any], benchmarks: pd.DataFrame, accuracy: pd.DataFrame | None) -> None:
    """Table and markdown artifacts a person reads on the run's page in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(key="asr-optimize-report", markdown=report["markdown"],
                             description="asr-optimize run report")
    create_table_artifact(key="asr-optimize-stages", table=report["stages"].to_dict(orient="records"),
                          description="stage status (ok / cached / skipped with reason / failed)")
    if not benchmarks.empty:
        columns = ["runner", "case", "status", "p50_ms", "p90_ms", "p99_ms", "x_real_time", "speedup_vs_baseline",
                   "reason"]
        rows = benchmarks[[c for c in columns if c in benchmarks]].round(3).fillna("").to_dict(orient="records")
        create_table_artifact(key="asr-optimize-benchmarks", table=rows, description="latency per backend and case")
    if accuracy is not None and not accuracy.empty:
        create_table_artifact(key="asr-optimize-accuracy", table=accuracy.round(4).fillna("").to_dict(orient="records"),
                              description="WER/CER and parity per backend, with the gate decision")


def report_stage(
    out_dir: Path, run_info: dict[str, Any], stages: list[StageResult], benchmarks: pd.DataFrame,
    profile_csv: Path | None, accuracy: pd.DataFrame | None = None, extra_sections: list[str] | None = None,
) -> StageResult:
    """Write the report folder (the stage table lists every stage, this one last) and publish it to the UI."""
    report = write_report(out_dir, run_info, stages, benchmarks, profile_csv, accuracy, extra_sections)
    if in_prefect_run():
        publish_prefect_artifacts(report, benchmarks, accuracy)
    get_logger().info("report: %s (%s)", out_dir, ", ".join(report["files"]))
    return StageResult(stage=STAGE, status="ok", artifact_dir=out_dir, location=str(out_dir),
                       metrics={"files": report["files"]})


report_task = stage_task(report_stage, name="report")
