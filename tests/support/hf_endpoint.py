"""A tiny Hugging Face Hub look-alike on 127.0.0.1, for ``HF_ENDPOINT`` (tests only).

It implements just what ``huggingface_hub`` (2.x) asks for ``model_info`` / ``repo_info``,
``snapshot_download`` and ``hf_hub_download`` of one model repo whose files come from a local folder:

- ``GET  /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: ``id``, ``sha``, ``siblings``
- ``GET  /api/models/{repo}/tree/{rev}``: the file listing (``type``, ``path``, ``size``, ``oid``)
- ``HEAD|GET /{repo}/resolve/{rev}/{filename}``: the file, with ``X-Repo-Commit``, ``ETag``, ``Content-Length``

``main`` resolves to the current sha (settable); every sha the server has been set to stays valid (all serve
the same folder). Unknown repos, revisions and files answer 404 with the ``X-Error-Code`` the hub uses.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class FakeHub:
    """State of the fake hub: one repo, its files, its current sha, and a log of requests."""

    def __init__(self, repo: str, folder: Path, sha: str) -> None:
        self.repo = repo
        self.folder = folder
        self.shas = [sha]
        self.requests: list[str] = []
        self.url = ""

    @property
    def sha(self) -> str:
        return self.shas[-1]

    def set_sha(self, sha: str) -> None:
        """Publish a new commit on ``main``."""
        self.shas.append(sha)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        if rev == "main":
            return self.sha
        return rev if rev in self.shas else None


def _blob_id(data: bytes) -> str:
    """git's blob id (what the hub reports as ``oid`` and the ETag of a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    api_re = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
    tree_re = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/.*)?$")
    file_re = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: str, message: str) -> None:
            self._send(404, json.dumps({"error": message}).encode(), {"X-Error-Code": code,
                                                                        "X-Error-Message": message})

        def _route(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append(f"{self.command} {path}")
            kind, match = "", None
            for regex, name in ((tree_re, "tree"), (api_re, "info"), (file_re, "file")):
                kind, match = name, regex.match(path)
                if match:
                    break
            if match is None:
                self._error("EntryNotFound", f"no route {path}")
                return
            if unquote(match["repo"]) != hub.repo:
                self._error("RepoNotFound", f"Repository {match['repo']} not found")
                return
            sha = hub.resolve(match["rev"] or "main")
            if sha is None:
                self._error("RevisionNotFound", f"Invalid rev id: {match['rev']}")
                return
            files = hub.files()
            if kind == "info":
                body = {"id": hub.repo, "modelId": hub.repo, "sha": sha, "private": False, "gated": False,
                        "disabled": False, "tags": ["wav2vec2"], "library_name": "transformers",
                        "siblings": [{"rfilename": p.relative_to(hub.folder).as_posix()} for p in files]}
                self._send(200, json.dumps(body).encode())
            elif kind == "tree":
                listing = []
                for p in files:
                    data = p.read_bytes()
                    listing.append({"type": "file", "path": p.relative_to(hub.folder).as_posix(), "size": len(data),
                                    "oid": _blob_id(data)})
                self._send(200, json.dumps(listing).encode())
            else:
                target = (hub.folder / unquote(match["file"])).resolve()
                if hub.folder.resolve() not in target.parents or not target.is_file():
                    self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
                    return
                data = target.read_bytes()
                self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{_blob_id(data)}"'},
                           content_type="application/octet-stream")

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

    return Handler


@contextmanager
def fake_hub(repo: str, folder: Path, sha: str) -> Iterator[FakeHub]:
    """Serve ``folder`` as hub repo ``repo`` at ``main == sha``; ``hub.url`` is the ``HF_ENDPOINT``."""
    hub = FakeHub(repo, folder, sha)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
