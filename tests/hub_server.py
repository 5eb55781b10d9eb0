"""A real HTTP server answering the endpoints ``huggingface_hub`` downloads through.

``/api/models/{id}[/revision/{rev}]`` (model info with file sizes), ``HEAD``/``GET``
``/{id}/resolve/{rev}/{file}`` (with ``X-Repo-Commit``, ``ETag``, ``Content-Length`` and ``Range``
answered with 206), and ``/api/whoami-v2`` for token checks. A gated repository answers 401 without
a token and 403 with a token that has not accepted its licence, with the hub's ``X-Error-Code:
GatedRepo``. Every request is logged, so a test can assert what the client asked for (a ``Range``
on resume). Large files are sent in pieces with a pause between them, so a test can stop a
download half way.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

# A small model's config.json, as a served repository holds it.
CONFIG = json.dumps(
    {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 512,
    }
).encode()


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: str | None


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    tokens_with_access: set[str] = field(default_factory=set)  # may read gated repositories
    valid_tokens: set[str] = field(default_factory=set)  # known to whoami
    piece: int = 64 * 1024
    pause_s: float = 0.0  # after each piece of a large file
    log: list[Request] = field(default_factory=list)
    url: str = ""

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, method: str | None = None, name: str = "") -> list[Request]:
        return [r for r in self.log if (method is None or r.method == method) and r.path.endswith(name)]

    # -- answers ---------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        auth = h.headers.get("Authorization")
        self.log.append(Request(h.command, path, h.headers.get("Range"), auth))
        token = auth.split(" ", 1)[1] if auth and " " in auth else None
        if path == "/api/whoami-v2":
            if token in self.valid_tokens:
                return self._json(h, {"name": "tester", "auth": {"accessToken": {"displayName": "t", "role": "read"}}})
            return self._error(h, 401, "Invalid credentials in Authorization header")
        if path.startswith("/api/models/"):
            repo_id = path[len("/api/models/") :].split("/revision/")[0]
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 401, "Repository not found", "RepoNotFound")
            return self._json(
                h,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "tags": [],
                    "siblings": [
                        {"rfilename": n, "size": len(b), "blobId": _etag(b)} for n, b in sorted(repo.files.items())
                    ],
                },
            )
        if "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            _rev, name = rest.split("/", 1)
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._error(h, 401, "Repository not found", "RepoNotFound")
            if repo.gated and token not in self.tokens_with_access:
                status = 403 if token else 401
                return self._error(h, status, "Access to this model is restricted.", "GatedRepo")
            if name not in repo.files:
                return self._error(h, 404, "Entry not found", "EntryNotFound")
            return self._file(h, repo, repo.files[name], head)
        self._error(h, 404, "Not found")

    def _file(self, h: BaseHTTPRequestHandler, repo: Repo, data: bytes, head: bool) -> None:
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng[len("bytes=") :].split("-")[0])
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.sha)
        h.send_header("ETag", f'"{_etag(data)}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        try:
            for i in range(0, len(body), self.piece):
                h.wfile.write(body[i : i + self.piece])
                h.wfile.flush()
                if self.pause_s and len(data) > self.piece:
                    time.sleep(self.pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (a paused or cancelled download)

    def _json(self, h: BaseHTTPRequestHandler, data: dict) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, status: int, message: str, code: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("X-Error-Message", message)
        if code:
            h.send_header("X-Error-Code", code)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
