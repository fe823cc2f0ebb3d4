"""Triton safety against the real bundled tritonserver: restricted model control, allow-listed server
environment, no orphaned server after SIGKILL, startup-exit message, crash-safe swap journal, GPU memory refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL, REPO_ROOT
from tests.support.triton_server import copy_artifact, demo_canary, pid_alive, wait_until

pytestmark = pytest.mark.requires("tritonserver")

MODEL, PIPELINE = repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME
SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-for-test", "HF_TOKEN": "hf-token-for-test",
           "PREFECT_API_KEY": "prefect-key-for-test"}

ENV_MODEL = '''
import json, os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        out = config["parameters"]["out"]["string_value"]
        with open(out, "w") as fh:
            json.dump(sorted(os.environ), fh)

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", np.zeros(1, np.float32))])
                for _ in requests]
'''


def _python_model(root: Path, name: str, out: Path) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(ENV_MODEL)
    (root / name / "config.pbtxt").write_text(textwrap.dedent(f'''
        name: "{name}"
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        parameters: {{ key: "out" value: {{ string_value: "{out}" }} }}
    '''))


def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_restricted_api_and_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unauthenticated load is refused (HTTP and gRPC) and runs no code; the key opens it; inference and
    health stay open; credentials reach neither the server nor its python models; the key is not in the log."""
    import tritonclient.grpc as grpcclient

    from asr_optimize.triton import auth
    from asr_optimize.triton.server import TritonServer

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    _python_model(repo, "envdump", tmp_path / "envdump.json")
    _python_model(repo, "evil", tmp_path / "evil-ran.json")
    with TritonServer(repo, load=["envdump"]) as server:
        base = f"http://{server.http_url}"
        status, body = _post(f"{base}/v2/repository/models/evil/load")
        assert status == 403 and "restricted" in body
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(Exception, match="restricted"):
            client.load_model("evil")
        with pytest.raises(Exception, match="restricted"):
            client.get_model_repository_index()
        assert not (tmp_path / "evil-ran.json").exists()
        assert _post(f"{base}/v2/repository/index", {auth.HEADER: "wrong"})[0] == 403
        assert _post(f"{base}/v2/repository/index", server.endpoint.http_headers())[0] == 200
        assert client.get_model_repository_index(headers=server.endpoint.grpc_headers()) is not None
        assert client.is_server_ready() and client.is_model_ready("envdump")  # health stays open
        x = grpcclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(__import__("numpy").zeros(1, "float32"))
        assert client.infer("envdump", [x]).as_numpy("y").shape == (1,)  # inference stays open

        server_env = Path(f"/proc/{server.process.pid}/environ").read_bytes().decode(errors="replace")
        model_env = json.loads((tmp_path / "envdump.json").read_text())
        for key, value in SECRETS.items():
            assert key not in model_env and value not in server_env and key not in server_env
        assert "PATH" in model_env
        assert server.api_key and server.api_key not in server.log_tail(10**6)


def test_startup_exit_is_reported_with_code(tmp_path: Path) -> None:
    from asr_optimize.triton.server import TritonServer, TritonServerError

    server = TritonServer(tmp_path / "repo", extra_args=["--no-such-flag=1"])
    with pytest.raises(TritonServerError, match=r"exited with code \d+ during startup:\n(?s:.+)"):
        server.start(timeout_s=60)
    server.cleanup()
    assert not server.work_dir.exists()


def _script(body: str) -> str:
    return "import json, os, signal, sys, time\nfrom pathlib import Path\n" + textwrap.dedent(body)


def _spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_sigkill_of_the_owner_leaves_no_server(tmp_path: Path) -> None:
    """SIGKILL of the process that started tritonserver: the watchdog stops the server and removes its work dir."""
    code = _script('''
        from asr_optimize.triton.server import TritonServer
        server = TritonServer(Path(sys.argv[1])).start()
        print(json.dumps({"pid": server.process.pid, "work_dir": str(server.work_dir)}), flush=True)
        time.sleep(600)
    ''')
    (tmp_path / "repo").mkdir()
    owner = _spawn(code, str(tmp_path / "repo"))
    line = owner.stdout.readline()
    assert line, owner.stderr.read()
    info = json.loads(line)
    assert pid_alive(info["pid"]) and Path(info["work_dir"]).is_dir()
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    assert wait_until(lambda: not pid_alive(info["pid"]), 30), "tritonserver outlived its owner"
    assert wait_until(lambda: not Path(info["work_dir"]).exists(), 10), "work dir left behind"


# ---------------------------------------------------------------- the swap journal

CRASHING_SWAP = _script('''
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set
    from asr_optimize.triton import hotswap
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap, pipeline_transcribe
    from asr_optimize.triton.endpoint import http_client
    root, artifact, model_dir, url, crash_at = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]
    utts = load_eval_set(EvalSource(max_samples=3)).utterances
    waves = [u.audio for u in utts]
    reference = pipeline_transcribe(http_client(url), "asr", waves)
    real_transcribe, real_wait = hotswap.pipeline_transcribe, hotswap.wait_ready
    def transcribe(client, pipeline, waves, acoustic_version=None):
        if crash_at == "canary" and acoustic_version is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # v(N+1) written, listed live and loaded; canary not run
        return real_transcribe(client, pipeline, waves, acoustic_version)
    def wait_ready(client, name, version, timeout_s):
        ok = real_wait(client, name, version, timeout_s)
        if crash_at == "promote" and name == "asr" and version is None:
            os.kill(os.getpid(), signal.SIGKILL)  # the pipeline already reloaded onto v(N+1); not confirmed
        return ok
    hotswap.pipeline_transcribe, hotswap.wait_ready = transcribe, wait_ready
    hot_swap(root, artifact, model_dir, CanarySet([u.id for u in utts], waves, reference), url,
             SwapOptions(grace_s=0))
    print("swap finished without crashing", flush=True)
''')


@pytest.fixture(scope="module")
def artifacts(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("journal-onnx")
    good = copy_artifact(demo_onnx, base / "good" / "model.onnx")
    return {"good": good, "copy": copy_artifact(good, base / "copy" / "model.onnx")}


@pytest.fixture(scope="module")
def canary():
    return demo_canary(DEMO_MODEL, 4)


def _texts(url: str, waves) -> list[str]:
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import pipeline_transcribe

    return pipeline_transcribe(http_client(url), PIPELINE, waves)


@pytest.mark.parametrize("crash_at", ["canary", "promote"])
def test_sigkill_mid_swap_then_reconcile(tmp_path: Path, artifacts, canary, crash_at: str) -> None:
    """SIGKILL of a process in the middle of a swap: reconcile removes the unconfirmed v2 and v1 serves again
    (with a running server, and on a server restart); the good version is never deleted."""
    from asr_optimize.triton import journal
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    repo = tmp_path / "repo"
    with TritonServer(repo) as server:
        assert hot_swap(repo, artifacts["good"], DEMO_MODEL, canary, server.http_url,
                        SwapOptions(grace_s=0)).promoted
        assert _texts(server.http_url, canary.waves) == canary.reference_transcripts
        crasher = _spawn(CRASHING_SWAP, str(repo), str(artifacts["copy"]), str(DEMO_MODEL), server.http_url,
                         crash_at, env=server.client_env())
        out, err = crasher.communicate(timeout=180)
        assert crasher.returncode == -signal.SIGKILL, (out, err[-2000:])
        record = journal.read_journal(repo, MODEL)
        assert record is not None and record.pending is not None and record.pending.version == 2
        assert record.serving == 1 and repo_mod.version_dirs(repo, MODEL) == [1, 2]
        assert repo_mod.live_versions(repo, MODEL) == [1, 2]  # the crash left v2 listed live
        if crash_at == "promote":
            assert repo_mod.serving_version(repo, PIPELINE) == 2  # ...and even serving, unconfirmed
            actions = journal.reconcile(repo, MODEL, PIPELINE, http_client(server.http_url))
            assert any("never confirmed" in a for a in actions) and any("pointed back at v1" in a for a in actions)
            assert _texts(server.http_url, canary.waves) == canary.reference_transcripts
            index = http_client(server.http_url).get_model_repository_index()
            assert not any(e["name"] == MODEL and e.get("version") == "2" and e.get("state") == "READY"
                           for e in index)
    if crash_at == "canary":  # reconcile when a server starts on the repository
        with TritonServer(repo, load=[MODEL, PIPELINE]) as restarted:
            assert any("v2 was never confirmed" in a for a in restarted.reconciled)
            assert _texts(restarted.http_url, canary.waves) == canary.reference_transcripts
    assert repo_mod.version_dirs(repo, MODEL) == [1] and repo_mod.live_versions(repo, MODEL) == [1]
    assert repo_mod.serving_version(repo, PIPELINE) == 1
    record = journal.read_journal(repo, MODEL)
    assert record.pending is None and record.serving == 1 and record.confirmed == [1]
    assert journal.reconcile(repo, MODEL, PIPELINE) == []  # idempotent


def test_gpu_memory_refusal(tmp_path: Path, artifacts, canary, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU swap refuses to start when free memory cannot hold N+1 beside N (the driver's numbers are faked
    here: this machine has no GPU); nothing is written and the serving version is untouched."""
    from asr_optimize.triton import gpu_memory, journal
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    repo = tmp_path / "repo"
    with TritonServer(repo) as server:
        assert hot_swap(repo, artifacts["good"], DEMO_MODEL, canary, server.http_url, SwapOptions(grace_s=0)).promoted
        monkeypatch.setattr(gpu_memory, "gpu_memory", lambda: [
            gpu_memory.GpuMemory(index=0, name="fake", total_mb=81559, used_mb=81000, free_mb=559)])
        opts = SwapOptions(grace_s=0, batching=repo_mod.BatchingOptions(instance_kind="KIND_GPU"))
        decision = hot_swap(repo, artifacts["copy"], DEMO_MODEL, canary, server.http_url, opts)
        assert decision.action == "refused" and decision.serving_version == 1
        assert "not enough free GPU memory" in decision.reasons[0] and "559 MiB free" in decision.reasons[0]
        assert repo_mod.version_dirs(repo, MODEL) == [1] and journal.read_journal(repo, MODEL).pending is None
        assert _texts(server.http_url, canary.waves[:1]) == canary.reference_transcripts[:1]
