"""Start and stop the real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel, on loopback.

That build serves the python backend only. Its python-backend stub embeds CPython in isolated mode (it ignores
PYTHONPATH) and finds packages through the ``python3`` first on PATH (a venv's ``pyvenv.cfg``). The stub was
built against numpy 1.x: with numpy 2 it silently corrupts tensors (wrong values, empty outputs). When the
current environment has numpy >= 2, a small side venv is made once (numpy<2 in its own site-packages, then
this environment's site-packages through a .pth file) and put first on the stub's PATH.

Safety: the server gets an allow-listed environment (no cloud or hub credentials), its model-control,
config, shared-memory, trace and logging APIs need a per-run key (``asr_optimize.triton.auth``) that never appears on
its world-readable command line (``asr_optimize.triton.keyshim``), and a small
watchdog process kills the server's process group and removes its ``/tmp/tritonserver-*`` folder when the
process that started it dies, even by SIGKILL. A server that exits during startup is reported with its exit
code and log tail, not as a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from asr_optimize.capabilities import find_tritonserver
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.triton import auth, endpoint, keyshim
from asr_optimize.triton.journal import pid_alive
from asr_optimize.watchdog import Watchdog

logger = logging.getLogger(__name__)
STUB_ENV_VAR = "ASR_OPTIMIZE_TRITON_STUB_ENV"
WORK_DIR_PREFIX = "tritonserver-"
OWNER_FILE = "owner.pid"
ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
             "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "CUDA_MODULE_LOADING",
             "CUDA_HOME", "CUDA_PATH", "OMP_NUM_THREADS", "ORT_CUDA_GRAPH", STUB_ENV_VAR)
ENV_ALLOW_PREFIXES = ("LC_",)
"""Variables the server (and every python model it runs) may see; credentials (AWS_*, HF_TOKEN, PREFECT_API_KEY)
never reach it. ``TritonServer(env_passthrough=[...])`` adds more by name."""


class TritonServerError(AsrOptimizeError):
    """The bundled tritonserver is missing or failed to start; the message includes its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asr-optimize"


def stub_python_env(cache_root: Path | None = None) -> Path | None:
    """Folder to put first on the stub's PATH (its ``bin``), or None when this env's numpy is already < 2."""
    import numpy as np

    if override := os.environ.get(STUB_ENV_VAR):
        if not (Path(override) / "bin" / "python3").exists():
            raise TritonServerError(f"{STUB_ENV_VAR}={override} is not a Python environment (no bin/python3): "
                                    "point it at a venv with numpy<2 for the python backend stub, or unset it")
        return Path(override)
    if int(np.__version__.split(".")[0]) < 2:
        return None
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    digest = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
    env_dir = (cache_root or _cache_root()) / f"triton-stub-env-{tag}-{digest}"
    if (env_dir / "ok").is_file():
        return env_dir
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=env_dir.name + ".", dir=env_dir.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(tmp)], check=True,
                       capture_output=True)
        site = tmp / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), "numpy<2"],
            capture_output=True, text=True,
        )
        if pip.returncode != 0:
            raise TritonServerError(
                "the bundled tritonserver's python backend needs numpy<2 beside this environment's numpy "
                f"{np.__version__}, and installing it failed: {pip.stderr.strip()[-500:]}. Make such a venv by "
                f"hand and point {STUB_ENV_VAR} at it"
            )
        parent_site = sysconfig.get_paths()["purelib"]
        (site / "zz_asr_optimize_parent_env.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
        (tmp / "ok").write_text(f"numpy<2 for the triton python backend stub; packages from {parent_site}\n")
        # venv writes absolute paths into pyvenv.cfg only for `home`, so the folder can be renamed
        if (env_dir / "ok").is_file():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(env_dir, ignore_errors=True)
            os.replace(tmp, env_dir)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TritonServerError(f"cannot create the stub venv: {exc.stderr!r}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return env_dir


def sweep_stale_work_dirs(tmp_dir: Path | None = None) -> list[Path]:
    """Remove ``tritonserver-*`` work folders whose owning process is gone (a SIGKILLed flow, a dead watchdog)."""
    removed = []
    for folder in Path(tmp_dir or tempfile.gettempdir()).glob(f"{WORK_DIR_PREFIX}*"):
        owner = folder / OWNER_FILE
        try:
            pid = int(owner.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # not ours (no owner file) or being written: leave it
        if not pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def server_env(binary: str, passthrough: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The allow-listed environment for tritonserver: library path for the wheel, the stub's python first."""
    allowed = set(ENV_ALLOW) | set(passthrough)
    env = {k: v for k, v in os.environ.items() if k in allowed or k.startswith(ENV_ALLOW_PREFIXES)}
    libs = []
    wheel_libs = Path(binary).resolve().parents[3] / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        libs.append(str(wheel_libs))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libs.append(str(libdir))
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    paths = [str(Path(sys.executable).parent)]
    stub_env = stub_python_env()
    if stub_env is not None:
        paths.insert(0, str(stub_env / "bin"))
    env["PATH"] = os.pathsep.join([*paths, env.get("PATH", os.defpath)])
    return env


def reconcile_repository(repository: Path, stale_after_s: float | None = None) -> list[str]:
    """Undo swaps that died mid-way (see ``journal.reconcile``) before a server loads the repository.

    A swap in progress (its lock is held here, or its owner is alive or on another host) is left alone and
    reported. Every action is logged (``asr_optimize.triton.journal`` / this module's logger, WARNING)."""
    from asr_optimize.triton import journal
    from asr_optimize.triton.names import InvalidModelName, check_model_name

    stale = journal.STALE_PENDING_S if stale_after_s is None else stale_after_s
    actions: list[str] = []
    for path in sorted(Path(repository).glob(f"*/{journal.JOURNAL_NAME}")):
        model = path.parent.name
        try:
            record = journal.read_journal(repository, check_model_name(model))
        except InvalidModelName as exc:
            actions.append(f"{model}: journal not checked: {exc}")
            continue
        if record is None:
            continue
        try:
            actions += journal.reconcile(repository, model, record.pipeline_name, stale_after_s=stale)
        except journal.SwapInProgressError as exc:
            actions.append(f"left alone: {exc}")
            logger.warning("before starting tritonserver on %s: %s", repository, actions[-1])
    return actions


def verify_repository(repository: Path, models: list[str]) -> None:
    """Check the files of every live version (with a manifest) of ``models`` by sha256 before a server loads them:
    a damaged version is refused with ``TritonServerError`` naming the file, instead of served."""
    from asr_optimize.triton import repository as repo_mod

    for model in models:
        for version in repo_mod.live_versions(repository, model):
            if repo_mod.read_manifest(repository, model, version) is None:
                continue  # not deployed by this package (no manifest): nothing recorded to check against
            try:
                repo_mod.verify_version(repository, model, version)
            except repo_mod.IntegrityError as exc:
                raise TritonServerError(f"not starting tritonserver on {repository}: {exc}") from exc


class TritonServer:
    """A tritonserver process in explicit model-control mode on free loopback ports.

    ``with TritonServer(repo, load=["asr"]) as server: ... server.http_url`` (``host:port``, no scheme).
    ``restricted=True`` (default) locks model control behind ``api_key``; clients in this package send it.
    ``gpus``: None leaves CUDA_VISIBLE_DEVICES as it is; an empty string hides every GPU.
    """

    def __init__(
        self,
        repository: Path,
        load: list[str] | None = None,
        work_dir: Path | None = None,
        binary: str | None = None,
        log_verbose: int = 0,
        restricted: bool = True,
        env_passthrough: list[str] | None = None,
        extra_args: list[str] | None = None,
        stale_pending_s: float | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.load = list(load or [])
        self.binary = binary or find_tritonserver()
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
        self.log_verbose = log_verbose
        self.restricted = restricted
        self.api_key = secrets.token_urlsafe(24) if restricted else None
        self.env_passthrough = list(env_passthrough or [])
        self.extra_args = list(extra_args or [])
        self.stale_pending_s = stale_pending_s
        """A pending swap of another host is repaired at start once older than this (None: the journal's default)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._watchdog: Watchdog | None = None
        self.reconciled: list[str] = []
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log_path = self.work_dir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def endpoint(self) -> endpoint.TritonEndpoint:
        """This server's addresses and key, as clients in this process find them."""
        return endpoint.TritonEndpoint(http=self.http_url, grpc=self.grpc_url, api_key=self.api_key)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _backends(self) -> Path:
        """Copy the wheel's backends and put the stub for this Python beside the python backend."""
        assert self.binary is not None
        server_root = Path(self.binary).resolve().parent.parent
        target = self.work_dir / "backends"
        if not (target / "python" / "triton_python_backend_stub").is_file():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(server_root / "backends", target)
            stub = server_root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
            stub = stub / "triton_python_backend_stub"
            if stub.is_file():
                shutil.copy2(stub, target / "python" / "triton_python_backend_stub")
        return target

    def _env(self) -> dict[str, str]:
        assert self.binary is not None
        return server_env(self.binary, self.env_passthrough)

    def client_env(self) -> dict[str, str]:
        """Environment entries a child process needs to control this server (the restricted-API key)."""
        return {auth.KEY_ENV: self.api_key} if self.api_key else {}

    def _start_watchdog(self) -> None:
        """Kill the server's process group and remove our work folder if this process dies."""
        assert self.process is not None
        self._watchdog = Watchdog(self.process.pid, "tritonserver", group=True,
                                  work_dir=str(self.work_dir) if self._own_work_dir else "")

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Launch and wait until the server is live and the requested models are ready."""
        if self.binary is None:
            raise TritonServerError(
                "tritonserver not found: install nvidia-pytriton==0.7.0 (pip install --no-deps) or put it on PATH"
            )
        try:
            shim = keyshim.build() if self.api_key else None
        except keyshim.KeyShimError as exc:
            raise TritonServerError(str(exc)) from exc
        sweep_stale_work_dirs()
        self.repository.mkdir(parents=True, exist_ok=True)
        self.reconciled = reconcile_repository(self.repository, self.stale_pending_s)
        verify_repository(self.repository, self.load)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        backends, env = self._backends(), self._env()
        if self.api_key and shim is not None:
            env = keyshim.server_env(env, self.api_key, shim)
        for attempt in range(3):
            self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
            args = [
                self.binary, f"--model-repository={self.repository}", f"--backend-directory={backends}",
                "--model-control-mode=explicit", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", "--exit-timeout-secs=10", f"--log-verbose={self.log_verbose}",
                *(keyshim.marked(auth.server_flags(keyshim.PLACEHOLDER)) if self.api_key else []),
                *[f"--load-model={m}" for m in self.load], *self.extra_args,
            ]
            log = self.log_path.open("ab")
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
            log.close()
            self._start_watchdog()
            state = self._wait_ready(timeout_s)
            if state == "ready":
                endpoint.register(self.endpoint)
                return self
            tail = self.log_tail()
            in_use = "address already in use" in tail.lower()
            code = self.process.returncode if self.process is not None else None
            self.stop()
            if not in_use or attempt == 2:
                if state == "exited":
                    raise TritonServerError(f"tritonserver exited with code {code} during startup:\n{tail}")
                raise TritonServerError(f"tritonserver did not become ready in {timeout_s:.0f} s:\n{tail}")
        raise TritonServerError("tritonserver could not bind its ports after 3 attempts")

    def _wait_ready(self, timeout_s: float) -> str:
        """'ready', 'exited' (the process is gone: no point waiting) or 'timeout'."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return "exited"
            if self._get("/v2/health/live") and all(self._get(f"/v2/models/{m}/ready") for m in self.load):
                return "ready"
            time.sleep(0.2)
        return "timeout"

    def _get(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.is_file():
            return "(no log)"
        return _redact(self.log_path.read_bytes()[-chars:].decode("utf-8", "replace"), self.api_key)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL of its whole group if it hangs."""
        endpoint.unregister(self.endpoint)
        if self.process is None:
            self._stop_watchdog()
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(OSError):  # python backend stubs left behind by a crashed server
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
        self._stop_watchdog()

    def cleanup(self) -> None:
        self.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start() if not self.running else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def _redact(text: str, key: str | None) -> str:
    """The log echoes the command line; never show the key in an error."""
    return text.replace(key, "<redacted>") if key else text


@contextlib.contextmanager
def bundled_triton(
    repository: Path, load: list[str] | None = None, timeout_s: float = 120.0, **kwargs: object
) -> Iterator[TritonServer]:
    """Run the bundled tritonserver for the duration of a ``with`` block (kwargs go to ``TritonServer``)."""
    server = TritonServer(repository, load=load, **kwargs)  # type: ignore[arg-type]
    try:
        yield server.start(timeout_s)
    finally:
        server.cleanup()
