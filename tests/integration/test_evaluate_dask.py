"""The evaluate stage sharded over a real Dask cluster (two worker processes on loopback) through prefect-dask gives
the one-process result bit for bit: transcripts, WER/CER, logit parity and every gate decision."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asr_optimize.quality.eval_sets import EvalSource, load_eval_set
from asr_optimize.runners.registry import RunnerSpec, baseline_spec
from tasks.evaluate import DaskOptions, EvaluateOptions, evaluate_backends, local_cluster
from tests.support.assets import DEMO_MODEL


@pytest.fixture(scope="module", autouse=True)
def patient_prefect() -> Iterator[None]:
    """No PREFECT_API_URL here: the stage starts Prefect's temporary API, as ``asr-optimize run`` does, given the
    time the CLI gives it on a busy 2-core host."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}):
        yield
    SubprocessASGIServer().stop()  # stopped here, while pytest's output is open, not at interpreter exit


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real LocalCluster: two single-threaded worker processes on 127.0.0.1, scratch space under tmp."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      local_directory=str(tmp_path_factory.mktemp("dask"))) as running:
        yield running


def test_sharded_evaluation_equals_the_one_process_run(cluster: Any, demo_onnx: Path, tmp_path: Path) -> None:
    from distributed import Client, get_task_stream
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    eval_set = load_eval_set(EvalSource(kind="demo"))
    specs = [baseline_spec(DEMO_MODEL, "cpu"),
             RunnerSpec(kind="onnxruntime", variant="exported", device="cpu", path=demo_onnx)]
    opts = EvaluateOptions(batch_size=8)
    here = evaluate_backends(specs, eval_set, DEMO_MODEL, opts, tmp_path / "here")

    # shards of 2 batches: 7 shards over 2 workers, so each worker runs several and the merge interleaves them
    sharded_opts = opts.model_copy(update={"dask": DaskOptions(enabled=True, address=cluster.scheduler_address,
                                                               shard_size=16)})
    with Client(cluster.scheduler_address, set_as_default=False) as client, get_task_stream(client) as stream:
        sharded = evaluate_backends(specs, eval_set, DEMO_MODEL, sharded_opts, tmp_path / "dask")

    assert [b.status for b in here.backends] == ["ok", "ok"]
    assert here.backends[1].decision is not None and here.backends[1].score is not None
    assert sharded.model_dump() == here.model_dump()  # WER/CER, parity (max logit diff), gate decisions, eval set
    assert (tmp_path / "dask" / "transcripts.csv").read_bytes() == (tmp_path / "here" / "transcripts.csv").read_bytes()
    assert len({task["worker"] for task in stream.data}) == 2  # both workers transcribed shards
    with get_client(sync_client=True) as prefect:  # one Prefect task run per shard, all completed
        runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="evaluate-shard")))
    assert len({r.name for r in runs}) == 7 and all(r.state is not None and r.state.is_completed() for r in runs)


def test_the_temporary_cluster_gives_each_worker_one_gpu(tmp_path: Path) -> None:
    """The cluster built when no scheduler address is given: one worker process per listed GPU, each seeing only its
    own (``CUDA_VISIBLE_DEVICES``); on this CPU host the variable is all there is to check."""
    import os

    import dask
    from distributed import Client

    with dask.config.set({"temporary-directory": str(tmp_path)}), local_cluster(2, ["0", "1"]) as cluster, \
            Client(cluster, set_as_default=False) as client:
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()))
    assert sorted(device for device, _ in seen.values()) == ["0", "1"]
    assert len({pid for _, pid in seen.values()}) == 2 and os.getpid() not in {pid for _, pid in seen.values()}


def test_without_an_address_the_stage_runs_on_a_temporary_cluster(demo_onnx: Path, tmp_path: Path) -> None:
    """The default when enabled: a cluster of ``n_workers`` started for the stage and closed after it (16 utterances
    of the demo set, shards of one batch)."""
    import dask

    from asr_optimize.quality.eval_sets import EvalSet

    full = load_eval_set(EvalSource(kind="demo"))
    eval_set = EvalSet(utterances=full.utterances[:16], bad_rows=[], n_rows=16, source=full.source)
    specs = [baseline_spec(DEMO_MODEL, "cpu"),
             RunnerSpec(kind="onnxruntime", variant="exported", device="cpu", path=demo_onnx)]
    opts = EvaluateOptions(batch_size=4)
    here = evaluate_backends(specs, eval_set, DEMO_MODEL, opts)
    sharded_opts = opts.model_copy(update={"dask": DaskOptions(enabled=True, n_workers=2, shard_size=4)})
    with dask.config.set({"temporary-directory": str(tmp_path)}):
        sharded = evaluate_backends(specs, eval_set, DEMO_MODEL, sharded_opts)
    assert sharded.model_dump() == here.model_dump()
