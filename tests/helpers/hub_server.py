"""A local stand-in for the Hugging Face Hub's model-repo HTTP API, for offline tests on 127.0.0.1.

It serves exactly the endpoints that ``huggingface_hub`` (read from its source, v1.x/2.x) calls for
``snapshot_download``/``hf_hub_download`` and for ``HfApi.create_repo``/``create_branch``/``upload_folder``:

- ``GET  /api/models/{repo}[/revision/{rev}]``   repo info: ``{"id", "sha", "siblings"}``
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]`` file listing (``type``, ``path``, ``size``, ``oid``)
- ``HEAD|GET /{repo}/resolve/{rev}/{filename}``   file, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``
- ``POST /api/repos/create``                       ``{"name", "organization"}`` -> ``{"url"}`` (409 if it exists)
- ``POST /api/models/{repo}/branch/{branch}``      new branch from the default branch (409 if it exists)
- ``POST /api/validate-yaml``                      always valid
- ``POST /api/models/{repo}/preupload/{rev}``      every file is a "regular" (inline) upload, so no LFS is needed
- ``POST /api/models/{repo}/commit/{rev}``         ndjson commit of base64 files -> ``{"commitUrl", "commitOid"}``

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) that
``huggingface_hub.utils.hf_raise_for_status`` maps to its exception types. Every request is recorded in
:attr:`FakeHub.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub"]

_REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    private: bool = False


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """In-memory model repos behind a ``ThreadingHTTPServer`` on a free loopback port.

    Example:
        >>> with FakeHub() as hub:  # doctest: +SKIP
        ...     sha = hub.commit("org/model", {"config.json": b"{}"})
        ...     # point HF_ENDPOINT at hub.endpoint
    """

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the server is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Repo state.

    def create_repo(self, repo_id: str, *, private: bool = False) -> None:
        with self._lock:
            self.repos.setdefault(repo_id, _Repo(private=private))

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", replace: bool = False) -> str:
        """Commit ``files`` on top of ``branch`` (or instead of its tree when ``replace``); returns the commit sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, _Repo())
            parent = repo.branches.get(branch)
            tree = {} if replace or parent is None else dict(repo.commits[parent])
            tree.update(files)
            self._counter += 1
            sha = hashlib.sha1(f"{repo_id}:{branch}:{self._counter}".encode()).hexdigest()
            repo.commits[sha] = tree
            repo.branches[branch] = sha
            return sha

    def tag(self, repo_id: str, name: str, sha: str) -> None:
        with self._lock:
            self.repos[repo_id].branches[name] = sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.branches.get(revision, revision)])

    def _resolve(self, repo_id: str, revision: str) -> tuple[_Repo, str] | str:
        repo = self.repos.get(repo_id)
        if repo is None:
            return "RepoNotFound"
        sha = repo.branches.get(revision, revision if revision in repo.commits else None)
        return (repo, sha) if sha is not None else "RevisionNotFound"


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # silence stderr
        pass

    # Responses.

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        head: bool = False,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: object, **kwargs: object) -> None:
        self._send(status, json.dumps(payload).encode(), **kwargs)  # type: ignore[arg-type]

    def _error(
        self, status: int, code: str, message: str, *, head: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        self._json(
            status,
            {"error": message},
            headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
            head=head,
        )

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _lookup(self, repo_id: str, revision: str, *, head: bool = False) -> tuple[_Repo, str] | None:
        found = self.fake._resolve(repo_id, revision)
        if found == "RepoNotFound":
            self._error(404, "RepoNotFound", "Repository not found", head=head)
            return None
        if found == "RevisionNotFound":
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return None
        return found  # type: ignore[return-value]

    # Routing.

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        self.fake.requests.append((method, path))
        routes = _GET_ROUTES if method in ("GET", "HEAD") else _POST_ROUTES
        for pattern, name in routes:
            match = re.fullmatch(pattern, path)
            if match:
                getattr(self, name)(
                    {k: unquote(v) if v else v for k, v in match.groupdict().items()}, head=method == "HEAD"
                )
                return
        if method == "POST":
            self._body()
        self._error(404, "NotFound", f"no route for {method} {path}", head=method == "HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # Read API.

    def repo_info(self, m: dict[str, str], head: bool = False) -> None:
        found = self._lookup(m["repo"], m.get("rev") or "main")
        if found:
            repo, sha = found
            siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
            self._json(
                200,
                {
                    "id": m["repo"],
                    "modelId": m["repo"],
                    "sha": sha,
                    "private": repo.private,
                    "siblings": siblings,
                    "tags": [],
                    "library_name": "scoredistill",
                },
            )

    def tree(self, m: dict[str, str], head: bool = False) -> None:
        found = self._lookup(m["repo"], m["rev"])
        if found:
            repo, sha = found
            prefix = (m.get("path") or "").strip("/")
            entries = [
                {"type": "file", "path": p, "size": len(data), "oid": _git_blob_sha1(data)}
                for p, data in sorted(repo.commits[sha].items())
                if not prefix or p.startswith(prefix + "/")
            ]
            self._json(200, entries)

    def resolve(self, m: dict[str, str], head: bool = False) -> None:
        found = self._lookup(m["repo"], m["rev"], head=head)
        if not found:
            return
        repo, sha = found
        data = repo.commits[sha].get(m["file"])
        if data is None:
            self._error(404, "EntryNotFound", f"{m['file']} does not exist", head=head, headers={"X-Repo-Commit": sha})
            return
        etag = f'"{_git_blob_sha1(data)}"'
        self._send(
            200,
            data,
            head=head,
            content_type="application/octet-stream",
            headers={"X-Repo-Commit": sha, "ETag": etag, "Accept-Ranges": "bytes"},
        )

    # Write API.

    def create_repo(self, m: dict[str, str], head: bool = False) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if repo_id in self.fake.repos:
            # Like the Hub, the 409 body still carries the URL (create_repo(exist_ok=True) reads it).
            message = "You already created this model repo"
            self._json(
                409, {"error": message, "url": f"{self.fake.endpoint}/{repo_id}"}, headers={"X-Error-Message": message}
            )
            return
        self.fake.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        # A new Hub repo has one commit with a .gitattributes file.
        self.fake.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        self._json(200, {"url": f"{self.fake.endpoint}/{repo_id}", "name": repo_id})

    def create_branch(self, m: dict[str, str], head: bool = False) -> None:
        payload = json.loads(self._body() or b"{}")
        found = self._lookup(m["repo"], payload.get("startingPoint") or "main")
        if not found:
            return
        repo, sha = found
        if m["branch"] in repo.branches:
            self._error(409, "Conflict", "Reference already exists")
            return
        self.fake.tag(m["repo"], m["branch"], sha)
        self._json(200, {})

    def validate_yaml(self, m: dict[str, str], head: bool = False) -> None:
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, m: dict[str, str], head: bool = False) -> None:
        payload = json.loads(self._body())
        if self._lookup(m["repo"], m["rev"]):
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in payload["files"]
            ]
            self._json(200, {"files": files})

    def commit(self, m: dict[str, str], head: bool = False) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._lookup(m["repo"], m["rev"]):
            return
        files: dict[str, bytes] = {}
        for item in lines:
            if item["key"] == "file":
                value = item["value"]
                if value.get("encoding") != "base64":
                    self._error(400, "BadRequest", f"unsupported encoding {value.get('encoding')!r}")
                    return
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] != "header":
                self._error(400, "BadRequest", f"this stand-in hub does not support {item['key']!r} operations")
                return
        sha = self.fake.commit(m["repo"], files, branch=m["rev"])
        self._json(
            200, {"commitUrl": f"{self.fake.endpoint}/{m['repo']}/commit/{sha}", "commitOid": sha, "success": True}
        )


_GET_ROUTES = [
    (rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    (rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    (rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", "resolve"),
]
_POST_ROUTES = [
    (r"/api/repos/create", "create_repo"),
    (rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
    (r"/api/validate-yaml", "validate_yaml"),
    (rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    (rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
]
