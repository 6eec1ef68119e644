"""A small stand-in for the Hugging Face Hub, on loopback, for tests.

It speaks the endpoints `huggingface_hub` (2.x) uses to create repos, commit and download, so that `HfApi.create_repo`,
`upload_folder`, `repo_info` / `space_info`, `list_repo_tree`, `hf_hub_download` and `snapshot_download` run
unchanged against it (pass `endpoint=server.url`, or set `HF_ENDPOINT` before a fresh process imports the client):

- `GET  /api/whoami-v2`
- `GET  /api/agent-harnesses`                           (the client's agent registry; answered empty)
- `POST /api/repos/create`                              (models, datasets, spaces; 409 when it exists)
- `POST /api/validate-yaml`                             (README metadata must be a YAML mapping)
- `POST /api/{type}s/{repo}/preupload/{rev}`            (every file `uploadMode: "regular"`: contents come inlined)
- `POST /api/{type}s/{repo}/commit/{rev}`               (NDJSON: header, file (base64), deletedFile, deletedFolder)
- `GET  /api/{type}s/{repo}[/revision/{rev}]`           (repo info: sha, siblings, sdk, private)
- `GET  /api/{type}s/{repo}/tree/{rev}[/{path}]`        (recursive listing)
- `POST /api/spaces/{repo}/variables`                   (Space environment variables)
- `HEAD|GET /[{type}s/]{repo}/resolve/{rev}/{path}`     (X-Repo-Commit, ETag, Content-Length; no xet headers)

LFS and xet uploads are refused (the stand-in answers "regular" for every file so clients never try them). Every
request the server does not know is answered 404/400 and recorded in `server.unexpected` (method and path) so a test
can assert none happened and a failure says what the client asked for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as the `oid` / ETag of regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    summary: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool = False
    sdk: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        for commit in self.commits:
            if commit.sha == sha:
                return commit
        return None

    def files(self, revision: str = "main") -> dict[str, bytes]:
        """Files at `revision` (a test helper)."""
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(f"{self.repo_type} {self.repo_id} has no revision {revision!r}")
        return commit.files


class HubStandIn:
    """The server plus its in-memory repos. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.unexpected: list[str] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def _new_commit(self, repo: Repo, files: dict[str, bytes], summary: str) -> Commit:
        digest = hashlib.sha1()
        digest.update(repo.branches.get("main", "").encode() + summary.encode() + str(time.time_ns()).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        commit = Commit(sha=digest.hexdigest(), files=files, summary=summary)
        repo.commits.append(commit)
        return commit


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet; failures are recorded in hub.unexpected
        pass

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, head)

    def _unexpected(self, why: str = "unknown endpoint") -> None:
        entry = f"{self.command} {self.path} ({why})"
        with self.hub.lock:
            self.hub.unexpected.append(entry)
        print(f"[hub stand-in] unexpected request: {entry}", file=sys.stderr)
        self._error(404 if why == "unknown endpoint" else 400, f"hub stand-in: {entry}")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or (self.hub.token is not None and auth[7:] != self.hub.token):
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _find_repo(self, repo_type: str, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound", head)
        return repo

    def _find_commit(self, repo: Repo, revision: str, head: bool = False) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head)
        return commit

    # ------------------------------------------------------------------ dispatch
    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self, head: bool = False) -> None:
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        with self.hub.lock:
            self.hub.requests.append(f"{self.command} {split.path}")
        try:
            if parts[:1] == ["api"]:
                self._api(parts[1:], query)
            elif "resolve" in parts:
                self._resolve(parts, head)
            else:
                self._unexpected()
        except Exception as error:  # report server bugs to the client instead of hanging it
            self._unexpected(f"server error {type(error).__name__}: {error}")

    def _api(self, parts: list[str], query: dict) -> None:
        method = self.command
        if method == "GET" and parts == ["agent-harnesses"]:
            # huggingface_hub >= 1.x fetches this registry for its user agent (best effort); an empty one is valid.
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return
        if method == "GET" and parts == ["whoami-v2"]:
            if self._authorized():
                self._json(
                    200,
                    {
                        "type": "user",
                        "id": "0" * 24,
                        "name": USER,
                        "fullname": "Test User",
                        "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                    },
                )
            return
        if method == "POST" and parts == ["repos", "create"]:
            return self._create_repo()
        if method == "POST" and parts == ["validate-yaml"]:
            return self._validate_yaml()
        if len(parts) >= 3 and parts[0] in _TYPES:
            repo_type, repo_id, rest = _TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
            if method == "GET" and not rest:
                return self._repo_info(repo_type, repo_id, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._repo_info(repo_type, repo_id, rest[1])
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), query)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_type, repo_id, rest[1])
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_type, repo_id, rest[1], query)
            if method == "POST" and repo_type == "space" and rest == ["variables"]:
                return self._add_variable(repo_id)
        self._unexpected()

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            return self._error(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        if repo_type == "space" and payload.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
            return self._error(400, f"Invalid or missing Space sdk: {payload.get('sdk')!r}")
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._json(409, {"error": f"You already created this {repo_type} repo", "url": url})
            repo = Repo(
                repo_id=repo_id,
                repo_type=repo_type,
                private=payload.get("visibility") == "private",
                sdk=payload.get("sdk"),
                variables={v["key"]: v["value"] for v in payload.get("variables") or []},
            )
            initial = self.hub._new_commit(
                repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit"
            )
            repo.branches["main"] = initial.sha
            self.hub.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": url, "name": repo_id, "id": "0" * 24})

    def _validate_yaml(self) -> None:
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as error:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
            if meta is not None and not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a YAML mapping"}]})
        self._json(200, {"warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._find_repo(repo_type, repo_id)
        commit = repo and self._find_commit(repo, revision)
        if commit is None:
            return
        siblings = [
            {"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in sorted(commit.files.items())
        ]
        info = {
            "id": repo_id,
            "_id": "0" * 24,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": siblings,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
        }
        if repo_type == "space":
            info.update(sdk=repo.sdk, runtime={"stage": "BUILDING", "hardware": {"current": None}})
        self._json(200, info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict) -> None:
        repo = self._find_repo(repo_type, repo_id)
        commit = repo and self._find_commit(repo, revision)
        if commit is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries, folders = [], set()
        for name, data in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            dirs = rel.split("/")[:-1]
            for depth in range(1, len(dirs) + 1 if recursive else min(1, len(dirs)) + 1):
                folders.add(prefix + "/".join(dirs[:depth]))
            if recursive or not dirs:
                entries.append({"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)})
        if prefix and not entries and not folders:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
        self._json(200, entries)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        if not self._authorized():
            return
        repo = self._find_repo(repo_type, repo_id)
        if repo is None:
            return
        current = repo.resolve(revision)
        existing = current.files if current else {}
        payload = json.loads(self._body() or b"{}")
        files = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(existing[f["path"]]) if f["path"] in existing else None,
            }
            for f in payload.get("files", [])
        ]
        self._json(200, {"files": files, "commitOid": current.sha if current else None})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict) -> None:
        if not self._authorized():
            return
        if query.get("create_pr"):
            return self._unexpected("pull requests are not supported by the stand-in")
        repo = self._find_repo(repo_type, repo_id)
        if repo is None:
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        with self.hub.lock:
            parent = repo.resolve(revision)
            if parent is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            if header.get("parentCommit") and header["parentCommit"] != parent.sha:
                return self._error(412, "parentCommit is not the head of the branch")
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        return self._unexpected(f"file encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    for name in [n for n in files if n.startswith(folder)]:
                        del files[name]
                else:
                    return self._unexpected(f"commit operation {key!r} (only regular files are supported)")
            commit = self.hub._new_commit(repo, files, header.get("summary", ""))
            repo.branches[revision] = commit.sha
        url = f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{commit.sha}"
        self._json(200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    def _add_variable(self, repo_id: str) -> None:
        if not self._authorized():
            return
        repo = self._find_repo("space", repo_id)
        if repo is None:
            return
        payload = json.loads(self._body() or b"{}")
        with self.hub.lock:
            repo.variables[payload["key"]] = payload["value"]
            variables = dict(repo.variables)
        self._json(200, {k: {"value": v, "updatedAt": "2026-01-01T00:00:00.000Z"} for k, v in variables.items()})

    def _resolve(self, parts: list[str], head: bool) -> None:
        at = parts.index("resolve")
        if self.command not in ("GET", "HEAD") or len(parts) < at + 3:
            return self._unexpected()
        repo_parts = parts[:at]
        repo_type = "model"
        if len(repo_parts) == 3 and repo_parts[0] in _TYPES:
            repo_type, repo_parts = _TYPES[repo_parts[0]], repo_parts[1:]
        if len(repo_parts) != 2:
            return self._unexpected("resolve path without namespace/name")
        repo = self._find_repo(repo_type, "/".join(repo_parts), head)
        commit = repo and self._find_commit(repo, parts[at + 1], head)
        if commit is None:
            return
        path = "/".join(parts[at + 2 :])
        if path not in commit.files:
            return self._send(
                404,
                b"",
                {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit.sha},
                head,
            )
        data = commit.files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
        }
        status, body = 200, data
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and not head:
            start_s, _, end_s = range_header[6:].partition("-")
            start, end = int(start_s or 0), int(end_s) if end_s else len(data) - 1
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        self._send(status, body, headers, head)
