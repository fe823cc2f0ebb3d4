"""The ``asr-optimize-fleet`` flow: one run of the ``asr-optimize`` deployment (``asr-optimize/prod`` by default) per
(model, GPU type) of a fleet file, on the work queue of that GPU type, then one report.

- At most ``max_parallel`` children are started and not yet finished at a time; the rest wait their turn.
- Every child is watched through the API until it is final (or ``timeout_s`` passes: then it is reported as not
  finished and keeps running). One failed or crashed child never stops the others; the fleet run fails at the end,
  after its report, when any child did not complete.
- Idempotent per fleet key: each child carries the key (fleet key, model, GPU type, revision, attempt). A rerun with
  the same key reuses a COMPLETED child (reported as ``reused``), waits for one still going, and starts the next
  attempt only for children that failed, crashed or were cancelled. Each child reuses the stages its model store
  already holds.
- The report (``fleet.md``, ``fleet.csv`` in ``<reports>/<fleet run name>/``, and the ``asr-optimize-fleet`` markdown
  artifact): per model x GPU type the child run, its final state and message, and the promotion decision read from
  the child's ``asr-optimize-report`` artifact, with the per-GPU-type production pointer it moves.

    asr-optimize fleet deploy/fleet.example.yaml --key nightly-2026-12-05
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run as current_run

from asr_optimize import defaults
from asr_optimize.fleet import (
    FleetError,
    FleetGpuType,
    FleetModel,
    FleetReport,
    FleetRow,
    FleetSpec,
    child_parameters,
    expected_pointer,
    idempotency_key,
    load_fleet_file,
    parse_fleet,
    promotion_from_report,
)
from asr_optimize.settings import get_settings
from tasks.common import get_logger

MAX_ATTEMPTS = 50
"""Attempts of one child looked up under one fleet key (a rerun starts attempt n+1 after n failed ones)."""
REPORT_ARTIFACT = "asr-optimize-report"
"""The child's report artifact (``tasks.report``), whose Promotion section the fleet report quotes."""


class FleetFailed(FleetError):
    """The fleet ran and wrote its report, but some children did not complete."""


@dataclass
class Child:
    model: FleetModel
    gpu: FleetGpuType
    attempt: int = 1
    run: Any = None  # the child's FlowRun once started or found

    def row(self, outcome: str, message: str = "", state: str = "") -> FleetRow:
        run = self.run
        return FleetRow(
            model=self.model.key, source=self.model.model, language=self.model.language or "",
            revision=self.model.revision, gpu_type=self.gpu.name, work_queue=self.gpu.work_queue, outcome=outcome,
            state=state or (run.state_name or run.state_type.value if run is not None and run.state else ""),
            message=message or (run.state.message or "" if run is not None and run.state else ""),
            flow_run_name=run.name if run is not None else "", flow_run_id=str(run.id) if run is not None else "",
            attempt=self.attempt, pointer=expected_pointer(self.model, self.gpu))


def load_spec(fleet: str | dict[str, Any]) -> FleetSpec:
    return parse_fleet(fleet, "(parameter)") if isinstance(fleet, dict) else load_fleet_file(Path(fleet))


def read_deployment(client: Any, name: str) -> Any:
    """The deployment, or a ``FleetError`` saying it is not registered on this API."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise FleetError(f"deployment {name!r} does not exist on the Prefect API {client.api_url}: register it "
                         "(`bash deploy/setup.sh`, or `prefect deploy --name <name>`) or pass --deployment") from None
    except ValueError as exc:  # not "flow/deployment"
        raise FleetError(f"deployment {name!r}: {exc}") from None


def missing_queue(client: Any, queue: str, pool: str | None) -> str | None:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_queue_by_name(queue, work_pool_name=pool)
    except ObjectNotFound:
        return f"work queue {queue!r} does not exist in work pool {pool!r} (create it and start a worker on it)"
    return None


def previous_attempts(client: Any, deployment_id: UUID, fleet_key: str, child: Child) -> list[Any]:
    """The runs this fleet key already started for ``child``, oldest attempt first."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterIdempotencyKey,
    )

    keys = {idempotency_key(fleet_key, child.model, child.gpu, n): n for n in range(1, MAX_ATTEMPTS + 1)}
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=list(keys))),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return sorted(runs, key=lambda r: keys[r.idempotency_key])


def promotion(client: Any, run_id: UUID) -> tuple[bool | None, str]:
    """What the child's report says about promotion; (None, "") when it wrote none."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    try:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[REPORT_ARTIFACT])))
    except Exception as exc:  # the report is worth having without it
        get_logger().warning("fleet: cannot read the report artifact of %s: %s", run_id, exc)
        return None, ""
    for artifact in artifacts:
        found = promotion_from_report(str(artifact.data or ""))
        if found[0] is not None:
            return found
    return None, ""


def finished_row(client: Any, child: Child, reused: bool = False) -> FleetRow:
    state = child.run.state
    completed = state is not None and state.is_completed()
    row = child.row("reused" if reused and completed else "completed" if completed else "failed")
    promoted, decision = promotion(client, child.run.id)
    return row.model_copy(update={"promoted": promoted, "decision": decision})


def start_child(deployment: str, fleet_key: str, spec: FleetSpec, child: Child) -> Any:
    from prefect.deployments import run_deployment

    tags = ["asr-optimize-fleet", f"gpu:{child.gpu.name}"] + (
        [f"lang:{child.model.language}"] if child.model.language else [])
    return run_deployment(
        deployment, parameters=child_parameters(spec, child.model, child.gpu), work_queue_name=child.gpu.work_queue,
        job_variables=child.gpu.job_variables or None, timeout=0, tags=tags,
        idempotency_key=idempotency_key(fleet_key, child.model, child.gpu, child.attempt))


def run_fleet(spec: FleetSpec, deployment: str, fleet_key: str, timeout_s: float, poll_s: float) -> FleetReport:
    """Start, watch and report every child (see the module docstring); never raises for a child's failure."""
    from prefect import get_client

    log = get_logger()
    rows: dict[tuple[str, str], FleetRow] = {}
    waiting: list[Child] = []
    running: list[Child] = []
    with get_client(sync_client=True) as client:
        target = read_deployment(client, deployment)
        queue_problem = {g.name: missing_queue(client, g.work_queue, target.work_pool_name) for g in spec.gpu_types}
        for model, gpu in spec.children():
            child = Child(model, gpu)
            if queue_problem[gpu.name]:
                rows[model.key, gpu.name] = child.row("not-started", queue_problem[gpu.name] or "")
                continue
            attempts = previous_attempts(client, target.id, fleet_key, child)
            done = next((r for r in attempts if r.state and r.state.is_completed()), None)
            going = next((r for r in attempts if r.state and not r.state.is_final()), None)
            if done is not None:
                child.run, child.attempt = done, attempts.index(done) + 1
                rows[model.key, gpu.name] = finished_row(client, child, reused=True)
                log.info("fleet: %s on %s already completed under key %s: %s (reused)", model.key, gpu.name,
                         fleet_key, done.name)
            elif going is not None:  # a run of an earlier fleet run with this key, still going: wait for it
                child.run, child.attempt = going, attempts.index(going) + 1
                running.append(child)
            else:
                child.attempt = len(attempts) + 1
                waiting.append(child)

        deadline = time.monotonic() + timeout_s
        while waiting or running:
            while waiting and len(running) < spec.max_parallel:
                child = waiting.pop(0)
                try:
                    child.run = start_child(deployment, fleet_key, spec, child)
                except Exception as exc:  # e.g. parameters the deployment's schema refuses
                    rows[child.model.key, child.gpu.name] = child.row(
                        "not-started", f"could not start: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                    log.error("fleet: %s on %s not started: %s", child.model.key, child.gpu.name, exc)
                    continue
                log.info("fleet: started %s for %s on %s (queue %s, attempt %d)", child.run.name, child.model.key,
                         child.gpu.name, child.gpu.work_queue, child.attempt)
                running.append(child)
            for child in list(running):
                child.run = client.read_flow_run(child.run.id)
                if child.run.state is not None and child.run.state.is_final():
                    running.remove(child)
                    row = rows[child.model.key, child.gpu.name] = finished_row(client, child)
                    (log.info if row.outcome == "completed" else log.error)(
                        "fleet: %s on %s: %s %s", child.model.key, child.gpu.name, row.state, row.message)
            if not (waiting or running):
                break
            if time.monotonic() >= deadline:
                for child in running:
                    rows[child.model.key, child.gpu.name] = child.row(
                        "not-finished", f"still {child.run.state_name} after the fleet's {timeout_s:g} s; left running")
                for child in waiting:
                    rows[child.model.key, child.gpu.name] = child.row(
                        "not-started", f"the fleet's {timeout_s:g} s passed before a slot was free")
                break
            time.sleep(poll_s)
    ordered = [rows[m.key, g.name] for m, g in spec.children()]
    return FleetReport(fleet_key=fleet_key, deployment=deployment, rows=ordered)


@flow(name="asr-optimize-fleet", log_prints=True)
def asr_optimize_fleet(
    fleet: str | dict[str, Any],  # a fleet YAML file (relative to the worker's checkout) or the mapping itself
    deployment: str | None = None,  # default: the fleet file's `deployment`, else asr-optimize/prod
    key: str | None = None,  # the fleet key (reruns with the same key reuse completed children); default: this run
    timeout_s: float = defaults.FLEET_TIMEOUT_S,
    poll_s: float = defaults.FLEET_POLL_S,
    reports_dir: str | None = None,  # default: settings (reports)
    only_models: list[str] | None = None,  # run only these models (hub id or fleet name); an upstream event sets it
    revision: str | None = None,  # with only_models: the revision to build (the event's)
) -> FleetReport:
    """Run the asr-optimize deployment for every (model, GPU type) of a fleet file and report on all of them."""
    spec = load_spec(fleet)
    target = deployment or spec.deployment or defaults.FLEET_DEPLOYMENT
    if only_models:
        picked = spec.only(only_models, revision)
        if not picked:
            get_logger().info("fleet: %s is not in the fleet; nothing to run", ", ".join(only_models))
            return FleetReport(fleet_key=key or "", deployment=target, rows=[])
        spec = spec.model_copy(update={"models": picked})
    run_name = current_run.get_name() or datetime.now(UTC).strftime("fleet-%Y%m%d-%H%M%S")
    fleet_key = key or current_run.get_id() or run_name
    get_logger().info("fleet %s: %d models x %d GPU types on %s", fleet_key, len(spec.models), len(spec.gpu_types),
                      target)
    report = run_fleet(spec, target, fleet_key, timeout_s, poll_s)
    folder = Path(reports_dir or get_settings().reports_dir) / run_name
    written = report.write(folder)
    get_logger().info("fleet report: %s", ", ".join(str(p) for p in written))
    from prefect.artifacts import create_markdown_artifact

    if current_run.get_id():
        create_markdown_artifact(key="asr-optimize-fleet", markdown=report.markdown(),
                                 description=f"asr-optimize fleet {fleet_key}: one row per model x GPU type")
    if report.failed():
        raise FleetFailed("; ".join(f"{r.model} on {r.gpu_type}: {r.outcome} ({r.state or 'no run'}: "
                                    f"{' '.join(r.message.split())[:200]})" for r in report.failed())
                          + f" (report in {folder})")
    return report
