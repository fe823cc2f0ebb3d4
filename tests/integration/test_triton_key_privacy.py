"""The bundled tritonserver's restricted-API key stays away from other local users (``asr_optimize.triton.keyshim``).

The main test runs a script as ``nobody`` against the real server: it reads what /proc shows of the server and its
children, tries every string it found as the key, and posts a python model through a file override. It must be
refused, while the flow's own client (with the key) can still load and unload.
"""

from __future__ import annotations

import base64
import json
import pwd
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from asr_optimize.capabilities import find_tritonserver
from asr_optimize.triton import auth, keyshim

pytestmark = pytest.mark.requires("tritonserver")

as_root = pytest.mark.requires("root")  # the attacker runs as another user (nobody)

MODEL_PY = '''
import json, os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        out = json.loads(args["model_config"])["parameters"]["out"]["string_value"]
        with open(out, "w") as fh:
            json.dump(dict(os.environ), fh)

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", np.zeros(1, np.float32))])
                for _ in requests]
'''


def load_body(name: str, out: str) -> bytes:
    """A load request that brings its own python model (file override): no file on the server's disk needed."""
    config = {"name": name, "backend": "python", "max_batch_size": 0,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
              "instance_group": [{"kind": "KIND_CPU", "count": 1}],
              "parameters": {"out": {"string_value": out}}}
    return json.dumps({"parameters": {"config": json.dumps(config),
                                      "file:1/model.py": base64.b64encode(MODEL_PY.encode()).decode()}}).encode()


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


ATTACKER = r'''
import base64, json, os, re, sys, urllib.error, urllib.request
pid, url, body, log_path, placeholder = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4], sys.argv[5]
report = {"uid": os.getuid(), "seen": {}, "errors": {}, "tries": []}
pids = [pid]
for task in os.listdir(f"/proc/{pid}/task"):
    try:
        pids += open(f"/proc/{pid}/task/{task}/children").read().split()
    except OSError:
        pass
for p in pids:
    for name in ("cmdline", "environ", "status", "comm", "maps"):
        path = f"/proc/{p}/{name}"
        try:
            report["seen"][path] = open(path, "rb").read().decode("latin-1")
        except OSError as exc:
            report["errors"][path] = type(exc).__name__
try:
    report["seen"][log_path] = open(log_path, "rb").read().decode("latin-1")
except OSError as exc:
    report["errors"][log_path] = type(exc).__name__
candidates = {placeholder, ""}
for text in report["seen"].values():
    for arg in text.split("\0"):
        candidates.add(arg)
        candidates.update(re.split(r"[=:,\s]", arg))
for key in sorted(candidates):
    headers = {"x-asr-optimize-key": key} if key else {}
    request = urllib.request.Request(f"http://{url}/v2/repository/models/pwned/load", data=body, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            report["tries"].append([key, response.status, response.read().decode()[:200]])
    except urllib.error.HTTPError as exc:
        report["tries"].append([key, exc.code, exc.read().decode()[:200]])
    except ValueError as exc:  # a header value urllib refuses (control characters)
        report["tries"].append([key, 0, str(exc)[:200]])
print(json.dumps(report))
'''


def _as_nobody(args: list[str]) -> subprocess.CompletedProcess[str]:
    user = pwd.getpwnam("nobody")
    if shutil.which("setpriv"):
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    elif shutil.which("runuser"):
        prefix = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser (util-linux) is installed")
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=300, cwd="/",
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})


def _nobody_python() -> str:
    for candidate in ("/usr/bin/python3", shutil.which("python3"), sys.executable):
        if candidate and _as_nobody([candidate, "-I", "-c", "pass"]).returncode == 0:
            return candidate
    pytest.skip("no python interpreter that the nobody user can run")


@pytest.mark.slow
@as_root
def test_other_user_cannot_find_the_key_or_load_a_model(tmp_path: Path) -> None:
    """As nobody: the key is not in the server's command line (only the placeholder), its environ is unreadable,
    and no string found there (nor the placeholder) opens model control: the python model never runs. The flow's
    client still loads and unloads, and the loaded model's environment has neither the key nor the shim."""
    from asr_optimize.triton.server import TritonServer

    python = _nobody_python()
    pwned, legit = tmp_path / "pwned.json", tmp_path / "legit.json"
    with TritonServer(tmp_path / "repo") as server:
        assert server.process is not None and server.api_key
        key = server.api_key
        result = _as_nobody([python, "-I", "-c", ATTACKER, str(server.process.pid), server.http_url,
                             load_body("pwned", str(pwned)).decode(), str(server.log_path), keyshim.PLACEHOLDER])
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["uid"] == pwd.getpwnam("nobody").pw_uid
        cmdline = report["seen"][f"/proc/{server.process.pid}/cmdline"]
        assert keyshim.PLACEHOLDER in cmdline and "--http-restricted-api" in cmdline  # it did read the cmdline
        assert report["errors"][f"/proc/{server.process.pid}/environ"] == "PermissionError"
        assert f"/proc/{server.process.pid}/environ" not in report["seen"]
        assert server.log_path.as_posix() in report["errors"]  # the work dir is private
        assert not any(key in text for text in report["seen"].values())
        tried = {k for k, _, _ in report["tries"]}
        assert keyshim.PLACEHOLDER in tried and "" in tried and len(tried) > 20
        for candidate, status, body in report["tries"]:
            assert status in (0, 403), (candidate, status, body)
        assert not pwned.exists()
        assert _post(f"http://{server.http_url}/v2/models/pwned/ready", b"")[0] != 200

        # the flow's own client, with the key: load (same file-override request), then unload
        headers = server.endpoint.http_headers()
        status, body = _post(f"http://{server.http_url}/v2/repository/models/legit/load",
                             load_body("legit", str(legit)), headers)
        assert status == 200, body
        model_env = json.loads(legit.read_text())
        assert keyshim.KEY_ENV not in model_env and "LD_PRELOAD" not in model_env
        assert not any(key in value for value in model_env.values())
        status, body = _post(f"http://{server.http_url}/v2/repository/models/legit/unload", b"{}", headers)
        assert status == 200, body

        # as the owner: the environment block shows the variable wiped; the raw log has no key either
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
        assert key.encode() not in environ and f"{keyshim.KEY_ENV}=".encode() in environ
        assert key.encode() not in server.log_path.read_bytes()


def _server_cmd(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    from asr_optimize.triton.server import server_env

    binary = find_tritonserver()
    assert binary is not None
    (tmp_path / "repo").mkdir()
    args = [binary, f"--model-repository={tmp_path / 'repo'}", "--model-control-mode=explicit",
            *keyshim.marked(auth.server_flags(keyshim.PLACEHOLDER))]
    return args, server_env(binary)


def test_without_the_shim_the_server_refuses_to_start(tmp_path: Path) -> None:
    """Fails closed: no shim -> the marked flags are stray arguments; shim but no key -> exit before main."""
    args, env = _server_cmd(tmp_path)
    no_shim = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert no_shim.returncode != 0 and "Unexpected argument" in no_shim.stdout + no_shim.stderr
    no_key = subprocess.run(args, env={**env, "LD_PRELOAD": str(keyshim.build())}, capture_output=True, text=True,
                            timeout=60)
    assert no_key.returncode == 78 and f"{keyshim.KEY_ENV} is not set" in no_key.stderr


def test_shim_build_is_cached_per_source_and_needs_a_compiler(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Built once per source hash (0755); without a C compiler the bundled server fails with a clear error."""
    from asr_optimize.triton.server import TritonServer, TritonServerError

    first = keyshim.build(tmp_path / "cache")
    assert first.stat().st_mode & 0o777 == 0o755 and keyshim.build(tmp_path / "cache") == first
    changed = tmp_path / "keyshim.c"
    changed.write_text(keyshim.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(keyshim, "SOURCE", changed)
    second = keyshim.build(tmp_path / "cache")
    assert second != first and second.is_file()
    assert not list((tmp_path / "cache").glob("*.tmp"))

    changed.write_text(changed.read_text() + "\n/* changed again */\n")
    server = TritonServer(tmp_path / "repo2")  # finds the binary before PATH is emptied
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(keyshim.KeyShimError, match=r"needs a C compiler \(apt-get install gcc\)"):
        keyshim.build(tmp_path / "cache")
    monkeypatch.setenv("ASR_OPTIMIZE_CACHE_ROOT", str(tmp_path / "cache"))
    from asr_optimize.settings import get_settings

    get_settings.cache_clear()
    try:
        with pytest.raises(TritonServerError, match="needs a C compiler"):
            server.start()
        assert server.process is None
    finally:
        server.cleanup()
        get_settings.cache_clear()
