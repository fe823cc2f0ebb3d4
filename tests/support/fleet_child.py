"""A stand-in for ``asr-optimize/prod`` as the child of a fleet, for tests/integration/test_fleet.py only.

A whole asr-optimize run takes minutes on a 2-core test host, and a fleet test needs six of them, so the fleet's
integration test deploys this flow instead: it takes the same parameters as the ``asr-optimize`` flow, really runs
the pipeline's first stage (``resolve-model``: pins the model and refuses a non-CTC one, as prod would), and writes
its ``asr-optimize-report`` artifact with the Promotion section the fleet report reads back (``promotion_lines``).
It runs on a real process worker like the real child; the fleet flow under test is the product's.

``options["stand_in_hold"]`` (a folder; the test's only switch): while ``<folder>/hold-<worker GPU>`` exists, the run
writes its process id to ``<folder>/pid-<worker GPU>`` and waits, so the test can kill its worker mid-run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from asr_optimize.fleet import promotion_lines
from tasks.resolve import resolve_task


@flow(name="asr-optimize-fleet-child")
def fleet_child_flow(
    model: str,
    revision: str | None = None,
    store: str | None = None,
    reports_dir: str | None = None,
    device: str = "cpu",
    require_gpu: bool = False,
    require_tensorrt: bool = False,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    resolved = resolve_task(model, revision)
    gpu = os.environ.get("FLEET_TEST_GPU", "none")  # set by the GPU type's job variables
    if hold := (options or {}).get("stand_in_hold"):
        flag = Path(hold) / f"hold-{gpu}"
        if flag.exists():
            (Path(hold) / f"pid-{gpu}").write_text(str(os.getpid()))
            while flag.exists():
                time.sleep(0.5)
    reason = f"stand-in promoted {resolved.revision} (worker GPU {gpu})"
    create_markdown_artifact(key="asr-optimize-report", markdown="\n".join(
        ["# stand-in report", *promotion_lines(True, reason), f"- options: {options}"]))
    return {"model": resolved.source, "revision": resolved.revision, "gpu": gpu}
