"""Static checks of docker/: nothing here builds or starts a container (no Docker engine is needed to run them).

- the compose files validate against the Compose Specification JSON schema (deploy/schemas/compose-spec.json);
- docker/worker.Dockerfile parses (dockerfile-parse), starts FROM an NVIDIA image, installs this project, checks
  TensorRT at build time, has a HEALTHCHECK and a worker ENTRYPOINT, and passes hadolint (when installed).
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.assets import REPO_ROOT
from tests.support.capabilities import hadolint_path

COMPOSE = REPO_ROOT / "docker" / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "docker" / "worker.Dockerfile"
SCHEMA = REPO_ROOT / "deploy" / "schemas" / "compose-spec.json"


def compose_errors(document: Any) -> list[str]:
    from jsonschema import Draft201909Validator

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft201909Validator.check_schema(schema)
    validator = Draft201909Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_files_match_the_compose_spec_schema() -> None:
    for path in sorted((REPO_ROOT / "docker").glob("docker-compose*.yml")):
        assert compose_errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == [], path.name


def test_schema_check_is_not_vacuous() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    broken = copy.deepcopy(compose)
    broken["services"]["gpu-worker"]["restartt"] = "always"
    broken["services"]["postgres"]["depends_on"] = {"minio": {"condition": "when_ready"}}
    errors = compose_errors(broken)
    assert any("restartt" in e for e in errors) and any("when_ready" in e for e in errors), errors


def test_compose_has_the_production_stack() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "tritonserver", "gpu-worker", "cpu-worker", "setup"} <= set(services)
    server = services["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    gpu = services["gpu-worker"]
    assert gpu["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert (COMPOSE.parent / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == DOCKERFILE
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "gpu-pool" in gpu["command"] and "cpu-pool" in services["cpu-worker"]["command"]
    # Triton comes from the Triton compose file, on the same NGC release as the worker (TensorRT engines must match)
    triton = services["tritonserver"]
    extended = yaml.safe_load((COMPOSE.parent / triton["extends"]["file"]).read_text(encoding="utf-8"))
    assert triton["extends"]["service"] in extended["services"]
    assert "${NGC_TAG:-25.10}" in triton["image"] and gpu["build"]["args"]["NGC_TAG"] == "${NGC_TAG:-25.10}"
    assert "triton_repository:/models" in triton["volumes"] and "triton_repository:/models" in gpu["volumes"]
    for name in ("postgres", "prefect-server", "minio"):
        assert "healthcheck" in services[name], name


@pytest.mark.requires("dockerfile-parse")
def test_worker_dockerfile() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE), cache_content=True)
    parser.content = DOCKERFILE.read_text(encoding="utf-8")
    assert parser.baseimage.startswith("nvcr.io/nvidia/"), parser.baseimage
    instructions = [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]
    runs = " ".join(value for name, value in instructions if name == "RUN")
    copies = [value.split()[0] for name, value in instructions if name == "COPY"]
    assert {"pyproject.toml", "asr_optimize", "flows", "tasks", "blocks", "deploy"} <= set(copies)
    assert "pip install" in runs and '-e ".[triton]"' in runs
    assert "import tensorrt" in runs  # the image refuses to build without TensorRT's Python API
    assert parser.envs["ASR_OPTIMIZE_HOME"] == "/opt/asr-optimize"  # prod's pull step works in that folder
    healthcheck = [value for name, value in instructions if name == "HEALTHCHECK"]
    assert healthcheck and "8080/health" in healthcheck[0]
    [entrypoint] = [json.loads(value) for name, value in instructions if name == "ENTRYPOINT"]
    assert entrypoint[:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in entrypoint
    user = [value for name, value in instructions if name == "USER"]
    assert user and user[-1] not in ("root", "0")


@pytest.mark.requires("hadolint")
def test_worker_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(hadolint_path()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
