"""A fleet: several models x several GPU types, each pair one run of the ``asr-optimize`` deployment on the work
queue of that GPU type. This module is the pure part (no Prefect): the fleet file (``FleetSpec``), the parameters and
idempotency key of each child run, and the fleet report. The flow that starts and watches the runs is
``flows.fleet``.

A fleet file (YAML)::

    deployment: asr-optimize/prod        # optional; the CLI's --deployment or the flow parameter wins
    max_parallel: 4                      # children not yet finished at any one time
    parameters: {store: "block:asr-optimize-store"}   # for every child
    models:
      - model: ai4bharat/indicwav2vec-hindi
        language: hi
        revision: latest                 # or a branch, tag or commit sha
        triton: {url: http://triton-hi:8000, model_name: wav2vec2_hi, pipeline_name: asr_hi}
        parameters: {options: {evaluate: {gate: {max_wer: 0.35}}}}   # this model's own flow parameters
    gpu_types:
      - name: nvidia-h100-80gb-hbm3-sm90   # GpuIdentity.gpu_type: the production pointer <model>.production.<name>
        work_queue: h100
        job_variables: {env: {CUDA_VISIBLE_DEVICES: "0"}}
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from asr_optimize import defaults
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.fileio import atomic_write_text
from asr_optimize.options import Options
from asr_optimize.store.local import production_pointer, slugify_model
from asr_optimize.triton.names import TritonModelName

MAX_FLEET_FILE_BYTES = 1_000_000
GPU_TYPE = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")
"""A GPU type as ``GpuIdentity.gpu_type`` writes it (lower case, digits, ``-``; no dots: it is a pointer segment)."""


class FleetError(AsrOptimizeError):
    """A fleet file that cannot be used, or a fleet that cannot start (one line, names the field or the run)."""


class FleetTriton(Options):
    """Where this model is served: the child's ``options.triton`` (unset fields keep the deployment's)."""

    url: str | None = None
    target_block: str | None = None
    model_name: TritonModelName | None = None
    pipeline_name: TritonModelName | None = None

    @model_validator(mode="after")
    def _distinct_names(self) -> FleetTriton:
        if self.model_name and self.model_name == self.pipeline_name:
            raise ValueError(f"model_name and pipeline_name are both {self.model_name!r}: two Triton models need "
                             "two names")
        return self

    def options(self) -> dict[str, Any]:
        """The ``options.triton`` part of the child's parameters."""
        out: dict[str, Any] = {k: v for k, v in {"url": self.url, "target_block": self.target_block}.items() if v}
        swap = {k: v for k, v in {"model_name": self.model_name, "pipeline_name": self.pipeline_name}.items() if v}
        if swap:
            out["swap"] = swap
        return out


class FleetModel(Options):
    model: str = Field(min_length=1)
    """A hub id (``owner/name``), a local folder or an ``s3://`` URI, as the ``asr-optimize`` flow takes it."""
    name: str | None = None
    """The model's name in the fleet and its report (default: ``model``); unique in the file."""
    revision: str = "latest"
    """A hub branch, tag or commit sha; ``latest``: the deployment's default (the newest on the hub)."""
    language: str | None = None
    triton: FleetTriton | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    """This model's flow parameters (deep-merged over the fleet's ``parameters`` and the ones made from the fields
    above)."""

    @property
    def key(self) -> str:
        return self.name or self.model

    @property
    def slug(self) -> str:
        return slugify_model(self.model)


class FleetGpuType(Options):
    name: str
    """The GPU type, as ``asr-optimize capabilities`` / ``GpuIdentity.gpu_type`` names it (e.g.
    ``nvidia-h100-80gb-hbm3-sm90``): engines built there are promoted under ``<model>.production.<name>``."""
    work_queue: str = Field(min_length=1)
    """The work queue (of the deployment's work pool) whose workers have this GPU type."""
    job_variables: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Flow parameters of every child on this GPU type, e.g. ``options.triton.url``: the Triton on these hosts."""

    @field_validator("name")
    @classmethod
    def _gpu_type(cls, value: str) -> str:
        if not GPU_TYPE.fullmatch(value):
            raise ValueError(f"{value!r} is not a GPU type as `asr-optimize capabilities` names it (lower-case "
                             "letters, digits and '-', e.g. nvidia-h100-80gb-hbm3-sm90)")
        return value


class FleetSpec(Options):
    """Which models to optimize on which GPU types; one child run of the deployment per (model, GPU type)."""

    deployment: str | None = None
    max_parallel: int = Field(defaults.FLEET_MAX_PARALLEL, ge=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    models: list[FleetModel] = Field(min_length=1)
    gpu_types: list[FleetGpuType] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[FleetModel]) -> list[FleetModel]:
        seen: dict[str, int] = {}
        for i, model in enumerate(models):
            if model.key in seen:
                raise ValueError(f"models[{i}] {model.key!r} is already models[{seen[model.key]}]; give one of them "
                                 "a distinct `name`")
            seen[model.key] = i
        return models

    @field_validator("gpu_types")
    @classmethod
    def _unique_gpu_types(cls, gpu_types: list[FleetGpuType]) -> list[FleetGpuType]:
        names = [g.name for g in gpu_types]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"GPU type(s) listed twice: {', '.join(dupes)}")
        return gpu_types

    @model_validator(mode="after")
    def _one_triton_model_per_child(self) -> FleetSpec:
        """Two children that hot-swap into the same Triton models would replace each other's: refuse the file."""
        seen: dict[tuple[Any, ...], str] = {}
        for i, model in enumerate(self.models):
            for j, gpu in enumerate(self.gpu_types):
                triton = child_parameters(self, model, gpu).get("options", {}).get("triton", {})
                if not isinstance(triton, dict) or triton.get("enabled", True) is False:
                    continue
                swap = triton.get("swap") if isinstance(triton.get("swap"), dict) else {}
                target = (triton.get("url"), triton.get("target_block"), swap.get("model_name"),
                          swap.get("pipeline_name"))
                where = f"models[{i}] ({model.key}) on gpu_types[{j}] ({gpu.name})"
                if target in seen:
                    raise ValueError(
                        f"{where} and {seen[target]} would hot-swap the same Triton models (url, target_block, "
                        f"model_name, pipeline_name = {target}) and replace each other: give each model its own "
                        "triton.model_name and pipeline_name, each GPU type its own Triton "
                        "(gpu_types[].parameters.options.triton.url), or options.triton.enabled: false")
                seen[target] = where
        return self

    def children(self) -> list[tuple[FleetModel, FleetGpuType]]:
        return [(m, g) for m in self.models for g in self.gpu_types]

    def only(self, models: list[str], revision: str | None = None) -> list[FleetModel]:
        """The fleet's models named in ``models`` (by hub id or fleet name), at ``revision`` when given. Why: an
        upstream-revision event names one hub model; the fleet then rebuilds that model on every GPU type, at the
        revision the event carries, and nothing else."""
        wanted = set(models)
        picked = [m for m in self.models if m.model in wanted or m.key in wanted]
        return [m.model_copy(update={"revision": revision}) if revision else m for m in picked]


def validation_message(exc: ValidationError, where: str) -> str:
    """One line naming each bad field (``models.1.revison: Extra inputs are not permitted``)."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
    return f"invalid fleet file {where}: {problems}"


def parse_fleet(data: Any, where: str = "") -> FleetSpec:
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as exc:
        raise FleetError(validation_message(exc, where)) from None


def load_fleet_file(path: Path) -> FleetSpec:
    """Read and validate a fleet YAML (or JSON) file; every problem is one ``FleetError`` line."""
    import yaml

    try:
        if path.stat().st_size > MAX_FLEET_FILE_BYTES:
            raise FleetError(f"fleet file {path} is larger than {MAX_FLEET_FILE_BYTES:,} bytes")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FleetError(f"cannot read fleet file {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise FleetError(f"fleet file {path} must hold a mapping (models:, gpu_types:), got {type(data).__name__}")
    return parse_fleet(data, str(path))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def child_parameters(spec: FleetSpec, model: FleetModel, gpu: FleetGpuType) -> dict[str, Any]:
    """The child run's parameters, each deep-merged over the one before: the fleet's, the GPU type's, those made
    from the model's fields (model, revision, triton), the model's own."""
    made: dict[str, Any] = {"model": model.model}
    if model.revision != "latest":
        made["revision"] = model.revision
    if model.triton and (triton := model.triton.options()):
        made["options"] = {"triton": triton}
    merged = spec.parameters
    for layer in (gpu.parameters, made, model.parameters):
        merged = deep_merge(merged, layer)
    return merged


def idempotency_key(fleet_key: str, model: FleetModel, gpu: FleetGpuType, attempt: int) -> str:
    """One key per (fleet key, model, GPU type, revision, attempt): the API gives back the existing run for a key
    it has seen, so a rerun of the fleet never starts a second child for the same attempt."""
    ident = hashlib.sha256(f"{model.model}\0{model.key}".encode()).hexdigest()[:12]
    return f"asr-optimize-fleet/{fleet_key}/{ident}/{gpu.name}/{model.revision}/attempt-{attempt}"


# ------------------------------------------------------------------------------------------ the child's report

PROMOTED_LINE = re.compile(r"^- promoted: \*\*(True|False)\*\*\s*$", re.MULTILINE)


def promotion_lines(promoted: bool, reason: str) -> list[str]:
    """The "Promotion" section of a run's report: what the fleet report reads back from the child's
    ``asr-optimize-report`` artifact (``promotion_from_report``)."""
    return ["## Promotion", f"- promoted: **{promoted}**", f"- {' '.join(reason.split())}"]


def promotion_from_report(markdown: str) -> tuple[bool | None, str]:
    """(promoted, reason) from a run's report markdown; (None, "") when it has no Promotion section."""
    match = PROMOTED_LINE.search(markdown or "")
    if not match:
        return None, ""
    rest = markdown[match.end():].lstrip("\n").splitlines()
    reason = rest[0][2:].strip() if rest and rest[0].startswith("- ") else ""
    return match.group(1) == "True", reason


# ------------------------------------------------------------------------------------------ the fleet report

Outcome = Literal["completed", "reused", "failed", "not-finished", "not-started"]


class FleetRow(BaseModel):
    """One (model, GPU type) of a fleet run."""

    model: str
    source: str
    language: str = ""
    revision: str
    gpu_type: str
    work_queue: str
    outcome: Outcome
    state: str = ""
    message: str = ""
    flow_run_name: str = ""
    flow_run_id: str = ""
    attempt: int = 0
    promoted: bool | None = None
    decision: str = ""
    pointer: str = ""


class FleetReport(BaseModel):
    fleet_key: str
    deployment: str
    rows: list[FleetRow]

    def failed(self) -> list[FleetRow]:
        return [r for r in self.rows if r.outcome not in ("completed", "reused")]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.outcome] = out.get(row.outcome, 0) + 1
        return out

    def markdown(self) -> str:
        def cell(value: Any) -> str:
            text = "" if value is None else str(value)
            return " ".join(text.split()).replace("|", "\\|")[:300]

        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        lines = [f"# asr-optimize fleet `{self.fleet_key}`", "",
                 f"- deployment: `{self.deployment}`", f"- children: {len(self.rows)} ({counts})", "",
                 "| model | language | revision | GPU type | queue | outcome | state | flow run | promoted | decision |"
                 " pointer |", "|" + "---|" * 11]
        for r in self.rows:
            run = f"{r.flow_run_name} (`{r.flow_run_id}`)" if r.flow_run_id else ""
            promoted = "" if r.promoted is None else ("yes" if r.promoted else "no")
            lines.append("| " + " | ".join(cell(v) for v in (
                r.model, r.language, r.revision, r.gpu_type, r.work_queue, r.outcome, r.state, run, promoted,
                r.decision, r.pointer)) + " |")
        problems = self.failed()
        if problems:
            lines += ["", "## Not completed", ""]
            lines += [f"- **{r.model}** on {r.gpu_type}: {r.outcome}, {r.state or 'no run'}: {cell(r.message)}"
                      for r in problems]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(FleetRow.model_fields), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(row.model_dump())
        return buffer.getvalue()

    def write(self, folder: Path) -> list[Path]:
        """``fleet.md`` and ``fleet.csv``, each written atomically (a reader never sees half a report)."""
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "fleet.md", folder / "fleet.csv"]
        atomic_write_text(written[0], self.markdown())
        atomic_write_text(written[1], self.csv())
        return written


def expected_pointer(model: FleetModel, gpu: FleetGpuType) -> str:
    """The production pointer an engine promoted by this child moves (``tasks.promote``)."""
    return production_pointer(model.slug, gpu.name)
