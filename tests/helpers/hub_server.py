"""A minimal stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for the real ``huggingface_hub`` client.

It answers just the requests the client makes in the tests (``snapshot_download`` and ``push_to_hub``):

- ``GET  /api/models/{repo}/revision/{rev}`` and ``GET /api/models/{repo}/tree/{rev}``: repo info, file list
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: a file with ``X-Repo-Commit`` and ``ETag``
- ``POST /api/repos/create``, ``/api/models/{repo}/branch/{b}``, ``/api/validate-yaml``,
  ``/api/models/{repo}/preupload/{rev}`` (every file inline, no LFS), ``/api/models/{repo}/commit/{rev}``

Errors carry the ``X-Error-Code`` the client maps to its exceptions (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``). Every request is recorded in ``FakeHub.requests``. Repo info lists each file's size and hash
(``?blobs=true``: a git blob id, and an LFS sha256 for ``*.safetensors``), as the Hub does.

A hostile endpoint: ``FakeHub.answer_commit`` / ``FakeHub.answer_etag`` are answered instead of the true commit id
and ETag; with ``FakeHub.second_answer`` set, only from the second time a path is asked (the first answer is
honest, as to a client that checks it before downloading). ``FakeHub.serve_instead[file]`` is served instead of a
file's true bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import constants as hf_constants

__all__ = ["FakeHub", "serve_hub"]


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sibling(path: str, data: bytes) -> dict:
    """A file as the Hub lists it with ``?blobs=true``: size, git blob id, and LFS info for weights."""
    entry: dict = {"rfilename": path, "size": len(data), "blobId": _blob_sha(data)}
    if path.endswith(".safetensors"):
        entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
    return entry


class FakeHub:
    """In-memory model repos (``repos[repo_id] = {"refs": {name: sha}, "commits": {sha: {path: bytes}}}``)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict]] = {}
        self.requests: list[tuple[str, str]] = []
        self.answer_commit: str | None = None  # reported instead of the true commit id (a hostile endpoint)
        self.answer_etag: str | None = None  # reported instead of the true ETag (a hostile endpoint)
        self.second_answer = False  # answer_commit / answer_etag only from the second request of a path
        self.serve_instead: dict[str, bytes] = {}  # file name -> bytes served instead of the true ones
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the server is not running"
        return "http://{}:{}".format(*self._server.server_address[:2])

    def __enter__(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", replace: bool = False) -> str:
        """Commit ``files`` on top of ``branch`` (instead of its tree when ``replace``); returns the commit sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
            parent = repo["refs"].get(branch)
            tree = {} if replace or parent is None else dict(repo["commits"][parent])
            tree.update(files)
            sha = hashlib.sha1(f"{repo_id}:{branch}:{len(repo['commits'])}".encode()).hexdigest()
            repo["commits"][sha] = tree
            repo["refs"][branch] = sha
            return sha

    def tag(self, repo_id: str, name: str, sha: str) -> None:
        self.repos[repo_id]["refs"][name] = sha

    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id]["refs"][branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo["commits"][repo["refs"].get(revision, revision)])


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def send(self, status: int, body: object = None, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def error(self, status: int, code: str, message: str, **headers: str) -> None:
        self.send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **headers})

    def lookup(self, repo_id: str, rev: str) -> tuple[dict, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found")
        sha = repo["refs"].get(rev, rev if rev in repo["commits"] else None)
        if sha is None:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, sha

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_HEAD(self) -> None:
        self.do_GET()

    def hostile(self, path: str) -> bool:
        """Whether to answer like a hostile endpoint (always, or from the second request of ``path``)."""
        return not self.hub.second_answer or sum(p == path for _, p in self.hub.requests) > 1

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path))
        hostile = self.hostile(path)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            if found := self.lookup(m[1], m[2] or "main"):
                files = [_sibling(p, d) for p, d in sorted(found[0]["commits"][found[1]].items())]
                sha = (hostile and self.hub.answer_commit) or found[1]
                self.send(200, {"id": m[1], "modelId": m[1], "sha": sha, "siblings": files, "private": False})
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            if found := self.lookup(m[1], m[2]):
                tree = found[0]["commits"][found[1]]
                self.send(
                    200, [{"type": "file", "path": p, "size": len(d), "oid": _blob_sha(d)} for p, d in tree.items()]
                )
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            if found := self.lookup(m[1], m[2]):
                data = found[0]["commits"][found[1]].get(m[3])
                headers = {"X-Repo-Commit": (hostile and self.hub.answer_commit) or found[1]}
                if data is None:
                    return self.error(404, "EntryNotFound", f"{m[3]} does not exist", **headers)
                etag = (hostile and self.hub.answer_etag) or _blob_sha(data)
                data = self.hub.serve_instead.get(m[3], data)
                self.send(200, data, {**headers, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"})
        else:
            self.error(404, "NotFound", f"no route for {self.command} {path}")

    def do_POST(self) -> None:
        path, payload = unquote(urlsplit(self.path).path), self.body()
        self.hub.requests.append(("POST", path))
        if path == "/api/repos/create":
            args = json.loads(payload)
            repo_id = f"{args.get('organization') or 'user'}/{args['name']}"
            url = {"url": f"{self.hub.endpoint}/{repo_id}"}
            if repo_id in self.hub.repos:  # like the Hub, the 409 still carries the URL (exist_ok=True reads it)
                return self.send(409, {"error": "You already created this model repo", **url})
            self.hub.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self.send(200, url)
        elif path == "/api/validate-yaml":
            self.send(200, {"errors": [], "warnings": []})
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/([^/]+)", path):
            if found := self.lookup(m[1], json.loads(payload or b"{}").get("startingPoint") or "main"):
                if m[2] in found[0]["refs"]:
                    return self.error(409, "Conflict", "Reference already exists")
                self.hub.tag(m[1], m[2], found[1])
                self.send(200)
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
            if self.lookup(m[1], m[2]):
                files = json.loads(payload)["files"]
                self.send(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
            if self.lookup(m[1], m[2]):
                items = [json.loads(line) for line in payload.splitlines() if line.strip()]
                if any(item["key"] not in ("header", "file") for item in items):
                    return self.error(400, "BadRequest", "this stand-in takes inline file uploads only")
                files = {
                    i["value"]["path"]: base64.b64decode(i["value"]["content"]) for i in items if i["key"] == "file"
                }
                sha = self.hub.commit(m[1], files, branch=m[2])
                self.send(200, {"commitUrl": f"{self.hub.endpoint}/{m[1]}/commit/{sha}", "commitOid": sha})
        else:
            self.error(404, "NotFound", f"no route for POST {path}")


@contextmanager
def serve_hub(monkeypatch: pytest.MonkeyPatch, cache: str) -> Iterator[FakeHub]:
    """A running `FakeHub` that the real ``huggingface_hub`` client talks to (default cache: ``cache``)."""
    with FakeHub() as hub:
        # HF_ENDPOINT is what users set; huggingface_hub also copies it into constants at import time.
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")  # never read a real login
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", cache)
        yield hub
