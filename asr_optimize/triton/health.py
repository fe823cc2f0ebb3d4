"""Health check of a deployed model: server live/ready, models ready, metadata and input handling vs manifest,
p50/p99 latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.endpoint import http_client
from asr_optimize.triton.hotswap import pipeline_transcribe
from asr_optimize.triton.names import check_model_name


class HealthReport(BaseModel):
    url: str
    model_name: str
    pipeline_name: str
    serving_version: int | None
    live: bool = False
    ready: bool = False
    models_ready: dict[str, bool] = Field(default_factory=dict)
    metadata_ok: bool = False
    problems: list[str] = Field(default_factory=list)
    n_requests: int = 0
    failures: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.passed:
            return (f"healthy: {self.pipeline_name} -> {self.model_name} v{self.serving_version}, "
                    f"p50 {self.latency_p50_ms:.1f} ms, p99 {self.latency_p99_ms:.1f} ms over {self.n_requests}")
        return "UNHEALTHY: " + "; ".join(self.problems)

    def markdown(self) -> str:
        rows = [("server live", self.live), ("server ready", self.ready),
                *((f"model {k} ready", v) for k, v in self.models_ready.items()),
                ("metadata matches manifest", self.metadata_ok)]
        lines = ["## Triton health check", "", f"**{self.summary()}**", "", "| check | result |", "|---|---|"]
        lines += [f"| {k} | {'ok' if v else 'FAIL'} |" for k, v in rows]
        lines += [f"| requests / failures | {self.n_requests} / {self.failures} |",
                  f"| latency p50 / p99 | {self.latency_p50_ms} / {self.latency_p99_ms} ms |"]
        lines += [f"| problem | {p} |" for p in self.problems]
        return "\n".join(lines)


def metadata_problems(metadata: dict[str, Any], manifest: repo_mod.VersionManifest) -> list[str]:
    """Differences between Triton's model metadata and what was deployed."""
    problems = []
    inputs = {t["name"]: t for t in metadata.get("inputs", [])}
    outputs = {t["name"]: t for t in metadata.get("outputs", [])}
    if sorted(inputs) != sorted(manifest.inputs):
        problems.append(f"inputs {sorted(inputs)} != manifest {sorted(manifest.inputs)}")
    if "input_values" in inputs and inputs["input_values"]["datatype"] != "FP32":
        problems.append(f"input_values is {inputs['input_values']['datatype']}, expected FP32")
    logits = outputs.get("logits")
    if logits is None:
        problems.append(f"no 'logits' output (outputs: {sorted(outputs)})")
    else:
        if logits["datatype"] != "FP32":
            problems.append(f"logits is {logits['datatype']}, expected FP32")
        if manifest.vocab_size and int(logits["shape"][-1]) != manifest.vocab_size:
            problems.append(f"logits vocabulary {logits['shape'][-1]} != manifest {manifest.vocab_size}")
    versions = [str(v) for v in metadata.get("versions", [])]
    if str(manifest.version) not in versions:
        problems.append(f"version {manifest.version} not among served versions {versions}")
    return problems


def padding_problems(root: Path, pipeline_name: str, manifest: repo_mod.VersionManifest) -> list[str]:
    """The pipeline pads, but the serving version's manifest says its model must run at exact lengths: served
    transcripts would differ from in-process ones (``asr_optimize.model.inputs``)."""
    if manifest.pads_batches or not repo_mod.pipeline_pads(root, pipeline_name):
        return []
    why = manifest.input_policy.reason if manifest.input_policy else "its graph takes no attention mask"
    return [f"{pipeline_name} zero-pads its inputs, but {manifest.model_name} v{manifest.version} must run at exact "
            f"lengths ({why}): redeploy the pipeline (a first deployment under new model and pipeline names writes it "
            "without padding)"]


def health_check(
    url: str,
    root: Path,
    audio: list[np.ndarray],
    model_name: str = repo_mod.DEFAULT_MODEL_NAME,
    pipeline_name: str = repo_mod.DEFAULT_PIPELINE_NAME,
    n_requests: int = 20,
    timeout_s: float = 30.0,
    max_p99_ms: float | None = None,
) -> HealthReport:
    """Check the server, both models, the serving version's files (sha256 against its manifest) and metadata, and
    latency over ``n_requests``."""
    check_model_name(model_name)
    check_model_name(pipeline_name, "Triton pipeline name")
    version = repo_mod.serving_version(root, pipeline_name)
    report = HealthReport(url=url, model_name=model_name, pipeline_name=pipeline_name, serving_version=version)
    try:
        client = http_client(url, timeout_s)
        report.live = bool(client.is_server_live())
        report.ready = bool(client.is_server_ready())
    except Exception as exc:
        report.problems.append(f"Triton at {url} unreachable: {type(exc).__name__}: {exc}")
        return report
    if not report.live or not report.ready:
        report.problems.append(f"server live={report.live} ready={report.ready}")
    if version is None:
        report.problems.append(f"no {pipeline_name} pipeline in {root}: nothing deployed")
        return report
    for name, ver in ((model_name, str(version)), (pipeline_name, "")):
        try:
            report.models_ready[name] = bool(client.is_model_ready(name, ver))
        except Exception as exc:
            report.models_ready[name] = False
            report.problems.append(f"{name}: {exc}")
    report.problems += [f"model {k} not ready" for k, v in report.models_ready.items() if not v]
    manifest = repo_mod.read_manifest(root, model_name, version)
    if manifest is None:
        report.problems.append(f"no manifest for {model_name} v{version} in {root}")
    else:
        try:  # the bytes Triton serves are the ones deployed (a damaged or replaced file is named)
            repo_mod.verify_version(root, model_name, version)
        except repo_mod.IntegrityError as exc:
            report.problems.append(str(exc))
        try:
            mismatches = metadata_problems(client.get_model_metadata(model_name, str(version)), manifest)
        except Exception as exc:
            mismatches = [f"metadata unavailable: {exc}"]
        report.metadata_ok = not mismatches
        report.problems += mismatches
        report.problems += padding_problems(root, pipeline_name, manifest)
    latencies = []
    for i in range(n_requests):
        start = time.perf_counter()
        try:
            pipeline_transcribe(client, pipeline_name, [audio[i % len(audio)]])
            latencies.append((time.perf_counter() - start) * 1000)
        except Exception as exc:
            report.failures += 1
            if report.failures == 1:
                report.problems.append(f"request failed: {type(exc).__name__}: {exc}")
    report.n_requests = n_requests
    if latencies:
        report.latency_p50_ms = round(float(np.percentile(latencies, 50)), 2)
        report.latency_p99_ms = round(float(np.percentile(latencies, 99)), 2)
        if max_p99_ms is not None and report.latency_p99_ms > max_p99_ms:
            report.problems.append(f"p99 {report.latency_p99_ms} ms exceeds {max_p99_ms} ms")
    if report.failures:
        report.problems.append(f"{report.failures} of {n_requests} requests failed")
    return report
