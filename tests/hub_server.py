"""A small Hugging Face Hub-compatible HTTP server for the test suite (standard library only).

There is no network in CI, so the Hub code paths (``push_to_hub``, ``from_pretrained("<user>/<repo>")``,
``hf_hub_download``, ``snapshot_download``, ``pipeline(model="<user>/<repo>")``) are tested against this server on
127.0.0.1. It keeps real git-like history: every commit gets a 40-hex id and a full snapshot of the repo's files,
branches/tags/PR refs map to commit ids, so older revisions stay loadable.

Endpoints spoken (what ``huggingface_hub`` 2.4 and ``transformers`` 5.23 send)::

    GET  /api/whoami-v2                                  any token is accepted
    POST /api/validate-yaml                              README.md front matter check (always valid)
    GET  /api/agent-harnesses, * /api/telemetry/...      client housekeeping
    POST /api/repos/create, DELETE /api/repos/delete
    GET  /api/{models|datasets|spaces}/{repo}[/revision/{rev}]     repo info (sha, siblings, ...)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]         tree listing (?recursive=, ?expand=)
    POST /api/{type}s/{repo}/paths-info/{rev}
    GET  /api/{type}s/{repo}/refs, /api/{type}s/{repo}/commits/{rev}
    POST /api/{type}s/{repo}/preupload/{rev}             always answers "uploadMode": "regular"
    POST /api/{type}s/{repo}/commit/{rev}                NDJSON: header / file (base64) / deletedFile / deletedFolder
    POST|DELETE /api/{type}s/{repo}/branch/{branch}      409 when the branch exists
    POST /api/{type}s/{repo}/tag/{rev}, DELETE /api/{type}s/{repo}/tag/{tag}
    HEAD|GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}      X-Repo-Commit, ETag, Content-Length, Range

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message`` so
the client raises ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and ``(Remote)EntryNotFoundError``.
Requests to anything else get a 404 and are recorded in ``LocalHub.unhandled``; server-side exceptions get a 500 and
are recorded in ``LocalHub.errors`` (``LocalHub.assert_clean()`` checks both).

Use ``serve_local_hub()`` (a context manager) or the ``local_hub`` pytest fixture (function-scoped: a new server,
new ``HF_HOME`` and cache for every test). Both point the environment *and* the already-imported
``huggingface_hub`` / ``transformers`` module constants at the server, and restore everything afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit


DEFAULT_USER = "user"
DEFAULT_TOKEN = "hf_localhub_0000000000000000000000000000"
DEFAULT_BRANCH = "main"

_PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO_ACTIONS = {"revision", "tree", "paths-info", "preupload", "commit", "branch", "tag", "refs", "commits"}
_INITIAL_GITATTRIBUTES = (
    b"# Large binary formats (the LocalHub test server stores every file as a regular blob)\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.npz filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as the ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    # The Hub's date format; `huggingface_hub.utils.parse_datetime` expects it.
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, body=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = body


def _repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


def _revision_not_found(rev: str) -> HubError:
    return HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def _entry_not_found(path: str, commit: str | None = None) -> HubError:
    headers = {"X-Repo-Commit": commit} if commit else {}
    return HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)


# --------------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Commit:
    oid: str
    parents: tuple
    files: dict  # path -> blob oid (a full snapshot of the tree)
    title: str
    message: str
    date: str
    author: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    uid: str
    commits: dict = field(default_factory=dict)  # oid -> Commit
    branches: dict = field(default_factory=dict)  # name -> oid
    tags: dict = field(default_factory=dict)  # name -> oid
    pull_requests: dict = field(default_factory=dict)  # number -> oid

    def resolve(self, rev: str | None) -> str:
        """Commit id of a branch, tag, ``refs/...`` name, full commit id or unique commit-id prefix."""
        rev = DEFAULT_BRANCH if rev in (None, "") else rev
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev.startswith("refs/heads/") and rev[len("refs/heads/") :] in self.branches:
            return self.branches[rev[len("refs/heads/") :]]
        if rev.startswith("refs/tags/") and rev[len("refs/tags/") :] in self.tags:
            return self.tags[rev[len("refs/tags/") :]]
        if rev.startswith("refs/pr/") and rev[len("refs/pr/") :].isdigit():
            number = int(rev[len("refs/pr/") :])
            if number in self.pull_requests:
                return self.pull_requests[number]
        lowered = rev.lower()
        if lowered in self.commits:
            return lowered
        if 5 <= len(lowered) < 40 and all(c in "0123456789abcdef" for c in lowered):
            matches = [oid for oid in self.commits if oid.startswith(lowered)]
            if len(matches) == 1:
                return matches[0]
        raise _revision_not_found(rev)

    def history(self, oid: str):
        """First-parent history, newest first."""
        while oid is not None:
            commit = self.commits[oid]
            yield commit
            oid = commit.parents[0] if commit.parents else None

    def last_commit_touching(self, oid: str, path: str, is_dir: bool) -> Commit:
        def state(commit):
            if not is_dir:
                return commit.files.get(path)
            prefix = path + "/"
            return tuple(sorted((p, o) for p, o in commit.files.items() if p.startswith(prefix)))

        commits = list(self.history(oid))
        current = state(commits[0])
        last = commits[0]
        for commit in commits[1:]:
            if state(commit) != current:
                break
            last = commit
        return last


class LocalHub:
    """A threaded Hub-compatible server on 127.0.0.1 (free port). Files live under ``root`` (a temp dir by default)."""

    def __init__(self, root: str | os.PathLike | None = None, *, user: str = DEFAULT_USER, token: str = DEFAULT_TOKEN):
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="localhub-")) if root is None else Path(root)
        self.blobs_dir = self.root / "blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blob_sizes: dict[str, int] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.home: Path | None = None  # set by `serve_local_hub`
        self.cache_dir: Path | None = None  # set by `serve_local_hub`
        self.env: dict[str, str] = {}  # set by `serve_local_hub`
        self._lock = threading.RLock()
        self._counter = 0
        self._nonce = os.urandom(8).hex()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set = set()
        self._connections_lock = threading.Lock()

    # ---------------------------------------------------------------- life cycle
    def start(self) -> "LocalHub":
        if self._server is not None:
            return self
        hub = self

        class Handler(_HubRequestHandler):
            pass

        Handler.hub = hub
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 128
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self._server = server
        self.port = server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"LocalHub:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close kept-alive connections and delete the storage (if it is a temp dir of our own)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            with self._connections_lock:
                connections = list(self._connections)
            for conn in connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def assert_clean(self) -> None:
        """Fail if a client called an endpoint the server does not speak, or if the server raised."""
        assert not self.unhandled, f"LocalHub got requests it does not handle: {self.unhandled}"
        assert not self.errors, "LocalHub raised:\n" + "\n".join(self.errors)

    # ---------------------------------------------------------------- storage helpers
    def repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _store_blob(self, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self.blobs_dir / oid[:2] / oid
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{oid}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        with self._lock:
            self.blob_sizes[oid] = len(data)
        return oid

    def blob_path(self, oid: str) -> Path:
        return self.blobs_dir / oid[:2] / oid

    def read_blob(self, oid: str) -> bytes:
        return self.blob_path(oid).read_bytes()

    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _repo_not_found(repo_id)
        return repo

    def _new_commit(self, repo: Repo, parent: str | None, files: dict, title: str, message: str = "") -> str:
        with self._lock:
            self._counter += 1
            seed = json.dumps([repo.repo_type, repo.repo_id, parent, sorted(files.items()), title, message,
                               time.time_ns(), self._counter, self._nonce])
            oid = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[oid] = Commit(
                oid=oid, parents=(parent,) if parent else (), files=dict(files), title=title, message=message,
                date=_now(), author=self.user,
            )
            return oid

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo directly (without HTTP); like the Hub, it starts with one commit holding .gitattributes."""
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", body={
                    "error": f"You already created this {repo_type} repo",
                    "url": f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}",
                })
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now(),
                        uid=hashlib.sha1(f"{repo_type}/{repo_id}/{self._nonce}".encode()).hexdigest()[:24])
            blob = self._store_blob(_INITIAL_GITATTRIBUTES)
            repo.branches[DEFAULT_BRANCH] = self._new_commit(repo, None, {".gitattributes": blob}, "initial commit")
            self.repos[(repo_type, repo_id)] = repo
            return repo


# --------------------------------------------------------------------------------------------------------------------
# Small parsers
# --------------------------------------------------------------------------------------------------------------------


def _scalar(value: str):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    if value.startswith("[") and value.endswith("]"):
        return [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
    return value


def _front_matter(text: str) -> dict:
    """Top-level scalars and simple lists of a README's YAML front matter (enough for tags / pipeline_tag)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data: dict = {}
    key = None
    for line in text[3:end].splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] not in " \t-" and ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            data[key] = _scalar(value) if value.strip() else []
        elif line.lstrip().startswith("- ") and key is not None and isinstance(data.get(key), list):
            data[key].append(_scalar(line.lstrip()[2:]))
    return data


def _truthy(values) -> bool:
    return bool(values) and str(values[-1]).lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------------


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    hub: LocalHub  # set on a per-server subclass

    # Track connections so `LocalHub.stop()` can close kept-alive ones.
    def setup(self):
        super().setup()
        with self.hub._connections_lock:
            self.hub._connections.add(self.connection)

    def finish(self):
        with contextlib.suppress(OSError):
            super().finish()
        with self.hub._connections_lock:
            self.hub._connections.discard(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    # ---------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        # Always drain the body, even when unused, or the next request on this kept-alive connection is garbage.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json", content_length: int | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.hub.requests.append((self.command, self.path, status))

    def _json(self, payload, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _handle(self):
        body = self._read_body()
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            segments = [unquote(s) for s in url.path.split("/") if s != ""]
            if segments[:1] == ["api"]:
                self._api(segments[1:], query, body)
            else:
                self._resolve(segments)
        except HubError as err:
            headers = {"X-Error-Message": err.message.splitlines()[0][:500], **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json(err.body if err.body is not None else {"error": err.message}, err.status, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the server: report it loudly
            self.hub.errors.append(f"{self.command} {self.path}\n{traceback.format_exc()}")
            with contextlib.suppress(Exception):
                self._json({"error": f"LocalHub internal error: {exc!r}"}, 500,
                           {"X-Error-Message": f"LocalHub internal error: {exc!r}"[:500]})

    def _unhandled(self):
        self.hub.unhandled.append((self.command, self.path))
        raise HubError(404, f"LocalHub does not implement {self.command} {urlsplit(self.path).path}")

    def _json_body(self, body: bytes) -> dict:
        if not body:
            return {}
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from None
        return data if isinstance(data, dict) else {"value": data}

    # ---------------------------------------------------------------- /api
    def _api(self, segs: list, query: dict, body: bytes):
        hub, method = self.hub, self.command
        if segs == ["whoami-v2"] and method == "GET":
            if not self.headers.get("Authorization"):
                raise HubError(401, "Invalid credentials in Authorization header")
            return self._json({
                "type": "user", "id": "0" * 24, "name": hub.user, "fullname": hub.user, "email": None,
                "emailVerified": False, "isPro": False, "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}},
            })
        if segs == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if segs == ["agent-harnesses"] and method == "GET":
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if segs[:1] == ["telemetry"]:
            return self._json({})
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo(self._json_body(body))
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(self._json_body(body))
        if len(segs) >= 2 and segs[0] in _PLURAL_TO_TYPE:
            return self._repo_api(_PLURAL_TO_TYPE[segs[0]], segs[1:], query, body)
        self._unhandled()

    def _create_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Unsupported repo type: {repo_type}")
        name = payload.get("name")
        if not name:
            raise HubError(400, "Missing repo name")
        repo_id = f"{payload.get('organization') or self.hub.user}/{name}"
        private = payload.get("private") is True or payload.get("visibility") == "private"
        repo = self.hub.create_repo(repo_id, repo_type, private)
        self._json({"url": self.hub.repo_url(repo), "name": repo_id, "id": repo.uid})

    def _delete_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
            del self.hub.repos[(repo_type, repo_id)]
        self._json({})

    def _split_repo(self, repo_type: str, rest: list) -> tuple:
        """Split ``ns/name/action/...`` (or a namespace-less ``name/action/...``) into (repo_id, rest)."""
        if len(rest) >= 2 and ((repo_type, f"{rest[0]}/{rest[1]}") in self.hub.repos or rest[1] not in _REPO_ACTIONS):
            return f"{rest[0]}/{rest[1]}", rest[2:]
        return rest[0], rest[1:]

    def _repo_api(self, repo_type: str, rest: list, query: dict, body: bytes):
        hub = self.hub
        repo_id, rest = self._split_repo(repo_type, rest)
        action, args = (rest[0], rest[1:]) if rest else (None, [])
        if action == "commit" and self.command == "POST" and args:
            return self._json(*self._commit(repo_type, repo_id, "/".join(args), query, body))
        with hub._lock:  # compute the answer under the lock, send it after
            repo = hub._get_repo(repo_type, repo_id)
            reply = self._repo_action(repo, action, args, query, body)
        if reply is None:
            self._unhandled()
        self._json(*reply)

    def _repo_action(self, repo: Repo, action, args: list, query: dict, body: bytes):
        """Returns ``(payload, status, headers)`` or None for an unknown endpoint. Called with the hub lock held."""
        method, rev = self.command, "/".join(args)
        if action is None and method == "GET":
            return self._repo_info(repo, repo.resolve(None), query), 200, None
        if action == "revision" and method == "GET" and args:
            return self._repo_info(repo, repo.resolve(rev), query), 200, None
        if action == "tree" and method == "GET" and args:
            return self._tree(repo, args, query)
        if action == "paths-info" and method == "POST" and args:
            return self._paths_info(repo, rev, body)
        if action == "refs" and method == "GET" and not args:
            return self._refs(repo, query), 200, None
        if action == "commits" and method == "GET" and args:
            history = [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
                for c in repo.history(repo.resolve(rev))
            ]
            return history, 200, None
        if action == "preupload" and method == "POST" and args:
            return self._preupload(repo, rev, body), 200, None
        if action == "branch" and args and method in ("POST", "DELETE"):
            return self._branch(repo, rev, body), 200, None
        if action == "tag" and args and method in ("POST", "DELETE"):
            return self._tag(repo, rev, body), 200, None
        return None

    # ---------------------------------------------------------------- repo info / listing
    def _repo_info(self, repo: Repo, oid: str, query: dict) -> dict:
        hub = self.hub
        commit = repo.commits[oid]
        with_blobs = _truthy(query.get("blobs"))
        siblings = []
        for path in sorted(commit.files):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=hub.blob_sizes.get(commit.files[path]), blobId=commit.files[path])
            siblings.append(sibling)
        info = {
            "_id": repo.uid, "id": repo.repo_id, "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": oid, "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "siblings": siblings,
            "usedStorage": sum(hub.blob_sizes.get(b, 0) for b in set(commit.files.values())),
        }
        card = {}
        if "README.md" in commit.files:
            with contextlib.suppress(Exception):
                card = _front_matter(hub.read_blob(commit.files["README.md"]).decode("utf-8"))
        tags = [t for t in (card.get("tags") or []) if isinstance(t, str)] if isinstance(card.get("tags"), list) else []
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            library_name = card.get("library_name") if isinstance(card.get("library_name"), str) else None
            pipeline_tag = card.get("pipeline_tag") if isinstance(card.get("pipeline_tag"), str) else None
            if library_name:
                info["library_name"] = library_name
            if pipeline_tag:
                info["pipeline_tag"] = pipeline_tag
            if "config.json" in commit.files:
                with contextlib.suppress(Exception):
                    config = json.loads(hub.read_blob(commit.files["config.json"]))
                    info["config"] = {k: config[k] for k in ("architectures", "model_type", "auto_map") if k in config}
                    if isinstance(config.get("model_type"), str):
                        tags.append(config["model_type"])
            if any(p.endswith(".safetensors") for p in commit.files):
                tags.append("safetensors")
            if library_name:
                tags.insert(0, library_name)
        info["tags"] = list(dict.fromkeys(tags))
        return info

    def _entry(self, repo: Repo, oid: str, path: str, is_dir: bool, expand: bool) -> dict:
        commit = repo.commits[oid]
        if is_dir:
            prefix = path + "/"
            listing = sorted((p, b) for p, b in commit.files.items() if p.startswith(prefix))
            entry = {"type": "directory", "oid": hashlib.sha1(json.dumps(listing).encode()).hexdigest(),
                     "size": 0, "path": path}
        else:
            blob = commit.files[path]
            entry = {"type": "file", "oid": blob, "size": self.hub.blob_sizes.get(blob, 0), "path": path}
        if expand:
            last = repo.last_commit_touching(oid, path, is_dir)
            entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return entry

    def _tree(self, repo: Repo, args: list, query: dict):
        oid = repo.resolve(args[0])
        path = "/".join(args[1:]).strip("/")
        files = repo.commits[oid].files
        recursive, expand = _truthy(query.get("recursive")), _truthy(query.get("expand"))
        if path and path in files:
            raise _entry_not_found(path, oid)  # a file is not a tree
        prefix = f"{path}/" if path else ""
        below = [p for p in files if p.startswith(prefix)]
        if path and not below:
            raise _entry_not_found(path, oid)
        entries: dict[str, bool] = {}  # path -> is_dir
        for file_path in below:
            parts = file_path[len(prefix) :].split("/")
            if recursive:
                for i in range(1, len(parts)):
                    entries[prefix + "/".join(parts[:i])] = True
                entries[file_path] = False
            else:
                entries[prefix + parts[0]] = len(parts) > 1
        ordered = sorted(entries.items(), key=lambda kv: (kv[0].count("/"), not kv[1], kv[0]))
        return [self._entry(repo, oid, p, is_dir, expand) for p, is_dir in ordered], 200, {"X-Repo-Commit": oid}

    def _paths_info(self, repo: Repo, rev: str, body: bytes):
        oid = repo.resolve(rev)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            payload = self._json_body(body)
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy(form.get("expand"))
        if isinstance(paths, str):
            paths = [paths]
        files = repo.commits[oid].files
        result = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                result.append(self._entry(repo, oid, path, False, expand))
            elif path and any(p.startswith(path + "/") for p in files):
                result.append(self._entry(repo, oid, path, True, expand))
        return result, 200, {"X-Repo-Commit": oid}

    def _refs(self, repo: Repo, query: dict):
        def ref(name, full, oid):
            return {"name": name, "ref": full, "targetCommit": oid}

        payload = {
            "branches": [ref(n, f"refs/heads/{n}", o) for n, o in sorted(repo.branches.items())],
            "tags": [ref(n, f"refs/tags/{n}", o) for n, o in sorted(repo.tags.items())],
            "converts": [],
        }
        if _truthy(query.get("include_prs")):
            payload["pullRequests"] = [
                ref(f"refs/pr/{n}", f"refs/pr/{n}", o) for n, o in sorted(repo.pull_requests.items())
            ]
        return payload

    # ---------------------------------------------------------------- writes
    def _preupload(self, repo: Repo, rev: str, body: bytes):
        payload = self._json_body(body)
        oid = repo.resolve(rev)
        files = repo.commits[oid].files
        answer = []
        for item in payload.get("files") or []:
            entry = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
            if item["path"] in files:
                entry["oid"] = files[item["path"]]
            answer.append(entry)
        return {"files": answer, "commitOid": oid}

    def _commit(self, repo_type: str, repo_id: str, rev: str, query: dict, body: bytes):
        hub = self.hub
        create_pr = _truthy(query.get("create_pr"))
        header: dict = {}
        operations = []
        for line_number, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise HubError(400, f"Invalid NDJSON on line {line_number}") from None
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                if value.get("encoding") == "base64":
                    data = base64.b64decode(content)
                else:
                    data = content.encode("utf-8")
                operations.append(("add", value["path"].strip("/"), hub._store_blob(data)))
            elif key in ("deletedFile", "deletedFolder"):
                operations.append((key, value["path"].strip("/"), None))
            elif key == "lfsFile":
                raise HubError(400, "LocalHub stores every file as a regular blob (it answers uploadMode 'regular'); "
                                    "LFS pointers are not supported")
            else:
                raise HubError(400, f"Unknown commit operation: {key!r}")
        summary = (header.get("summary") or "").strip()
        if not summary:
            raise HubError(400, "Commit summary is required")

        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if create_pr:
                base = repo.resolve(rev)
            elif rev in repo.branches:
                base = repo.branches[rev]
            elif rev.startswith("refs/pr/") and rev[8:].isdigit() and int(rev[8:]) in repo.pull_requests:
                base = repo.pull_requests[int(rev[8:])]
            else:
                repo.resolve(rev)  # 404 RevisionNotFound if it does not exist at all
                raise HubError(400, f"Invalid rev id: {rev} is not a branch; commits go to branches")
            parent_commit = header.get("parentCommit")
            if parent_commit and not base.startswith(parent_commit.lower()):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[base].files)
            for kind, path, blob in operations:
                if kind == "add":
                    if any(p.startswith(path + "/") for p in files):
                        raise HubError(400, f"Cannot add file {path}: a folder with this name exists")
                    files[path] = blob
                elif kind == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                else:
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
            oid = hub._new_commit(repo, base, files, summary, header.get("description") or "")
            pr_url = None
            if create_pr:
                number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[number] = oid
                pr_url = f"{hub.repo_url(repo)}/discussions/{number}"
            elif rev in repo.branches:
                repo.branches[rev] = oid
            else:
                repo.pull_requests[int(rev[8:])] = oid
        payload = {
            "success": True, "commitOid": oid, "commitUrl": f"{hub.repo_url(repo)}/commit/{oid}",
            "pullRequestUrl": pr_url, "hookOutput": "",
        }
        return payload, 200, None

    def _branch(self, repo: Repo, branch: str, body: bytes):
        payload = self._json_body(body)
        if self.command == "DELETE":
            if branch not in repo.branches:
                raise _revision_not_found(branch)
            if branch == DEFAULT_BRANCH:
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return {}
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        if not branch or branch.startswith("refs/") or " " in branch or ".." in branch:
            raise HubError(400, f"Invalid branch name: {branch!r}")
        repo.branches[branch] = repo.resolve(payload.get("startingPoint"))
        return {}

    def _tag(self, repo: Repo, arg: str, body: bytes):
        payload = self._json_body(body)
        if self.command == "DELETE":
            if arg not in repo.tags:
                raise _revision_not_found(arg)
            del repo.tags[arg]
            return {}
        tag = payload.get("tag")
        if not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Reference already exists: refs/tags/{tag}")
        repo.tags[tag] = repo.resolve(arg)
        return {}

    # ---------------------------------------------------------------- file downloads
    def _resolve(self, segs: list):
        if self.command not in ("GET", "HEAD"):
            self._unhandled()
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, segs = _PLURAL_TO_TYPE[segs[0]], segs[1:]
        if len(segs) >= 4 and segs[2] == "resolve":
            repo_id, rev, path_parts = f"{segs[0]}/{segs[1]}", segs[3], segs[4:]
        elif len(segs) >= 3 and segs[1] == "resolve":
            repo_id, rev, path_parts = segs[0], segs[2], segs[3:]
        else:
            self._unhandled()
        path = "/".join(path_parts)
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            oid = repo.resolve(rev)
            blob = repo.commits[oid].files.get(path)
            if blob is None:
                raise _entry_not_found(path, oid)
            size = hub.blob_sizes[blob]
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{blob}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes=") and "," not in range_header and size > 0:
            first, _, last = range_header[len("bytes=") :].partition("-")
            try:
                if first:
                    start, end = int(first), (int(last) if last else size - 1)
                else:  # suffix range: the last N bytes
                    start, end = max(size - int(last), 0), size - 1
            except ValueError:
                start, end = 0, size - 1
            else:
                if start >= size:
                    headers["Content-Range"] = f"bytes */{size}"
                    return self._send(416, b"", headers)
                end = min(end, size - 1)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        if self.command == "HEAD":
            return self._send(status, b"", headers, "application/octet-stream", content_length=length)
        data = hub.read_blob(blob)[start : end + 1]
        self._send(status, data, headers, "application/octet-stream")


# --------------------------------------------------------------------------------------------------------------------
# Pointing huggingface_hub / transformers at the server
# --------------------------------------------------------------------------------------------------------------------

# Environment variables that would send clients elsewhere (another cache, offline mode, staging, another token).
_ENV_TO_REMOVE = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_CO_STAGING",
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE",
    "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE", "PYTORCH_PRETRAINED_BERT_CACHE",
    "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_OIDC_RESOURCE",
)

_process_modules_cache: str | None = None


def _process_modules_cache_dir() -> str:
    # transformers puts HF_MODULES_CACHE on sys.path and imports `transformers_modules` from it once per process, so
    # in-process it must not change from test to test: one temp dir for the whole process.
    global _process_modules_cache
    if _process_modules_cache is None:
        _process_modules_cache = tempfile.mkdtemp(prefix="localhub-modules-")
        import atexit

        atexit.register(shutil.rmtree, _process_modules_cache, True)
    return _process_modules_cache


class _Patcher:
    _MISSING = object()

    def __init__(self):
        self._undo = []

    def setattr(self, obj, name, value, *, only_if_present=False):
        old = getattr(obj, name, self._MISSING)
        if old is self._MISSING and only_if_present:
            return
        self._undo.append((obj, name, old))
        setattr(obj, name, value)

    def setenv(self, name, value):
        self._undo.append((os.environ, name, os.environ.get(name, self._MISSING)))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def undo(self):
        for obj, name, old in reversed(self._undo):
            if obj is os.environ:
                if old is self._MISSING:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old
            elif old is self._MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)
            else:
                setattr(obj, name, old)
        self._undo.clear()


def _hub_environment(hub: LocalHub, home: Path, modules_cache: str) -> dict:
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(home),
        "HF_TOKEN": hub.token,
        "HF_MODULES_CACHE": modules_cache,
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
        "no_proxy": ",".join(filter(None, [os.environ.get("no_proxy"), "127.0.0.1", "localhost"])),
    }


def _reset_client_state() -> None:
    """Drop process-wide client objects that remember an endpoint or hold connections to an old server."""
    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None:
        http.close_session()
    fs = sys.modules.get("huggingface_hub.hf_file_system")
    if fs is not None:
        with contextlib.suppress(Exception):
            fs.HfFileSystem.clear_instance_cache()
    tree_cache = sys.modules.get("huggingface_hub._tree_cache")
    if tree_cache is not None:
        with tree_cache._IN_MEMORY_TREE_CACHE_LOCK:
            tree_cache._IN_MEMORY_TREE_CACHE.clear()
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        transformers_hub._hf_api = None  # transformers' shared HfApi is created lazily with constants.ENDPOINT


def _patch_process(hub: LocalHub, home: Path, patcher: _Patcher) -> None:
    """Point this (already running) Python process at ``hub``: env vars *and* values read at import time."""
    for name in _ENV_TO_REMOVE:
        patcher.setenv(name, None)
    for name, value in _hub_environment(hub, home, _process_modules_cache_dir()).items():
        patcher.setenv(name, value)

    import huggingface_hub
    import huggingface_hub.hf_api
    import huggingface_hub.utils._cache_assets
    import huggingface_hub.utils._cache_manager
    import huggingface_hub.utils._git_credential
    import huggingface_hub.utils._http
    from huggingface_hub import constants

    home_str = str(home)
    hub_cache = os.path.join(home_str, "hub")
    assets_cache = os.path.join(home_str, "assets")
    token_path = os.path.join(home_str, "token")
    values = {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(getattr(constants, "HF_URL_HOSTS", frozenset()) | {"127.0.0.1"}),
        "HF_HOME": home_str,
        "default_cache_path": hub_cache,
        "default_assets_cache_path": assets_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HUGGINGFACE_ASSETS_CACHE": assets_cache,
        "HF_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "default_xet_cache_path": os.path.join(home_str, "xet"),
        "HF_XET_CACHE": os.path.join(home_str, "xet"),
        "HF_TOKEN_PATH": token_path,
        "HF_STORED_TOKENS_PATH": os.path.join(home_str, "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home_str, ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": os.path.join(home_str, ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": os.path.join(home_str, ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in values.items():
        patcher.setattr(constants, name, value, only_if_present=True)
    # Names re-exported / copied at import time.
    if "HUGGINGFACE_CO_URL_TEMPLATE" in vars(huggingface_hub):
        patcher.setattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", values["HUGGINGFACE_CO_URL_TEMPLATE"])
    patcher.setattr(huggingface_hub.hf_api.api, "endpoint", hub.endpoint)  # `huggingface_hub.create_repo` & co.
    patcher.setattr(huggingface_hub.utils._cache_assets, "HF_ASSETS_CACHE", assets_cache, only_if_present=True)
    patcher.setattr(huggingface_hub.utils._cache_manager, "HF_HUB_CACHE", hub_cache, only_if_present=True)
    patcher.setattr(huggingface_hub.utils._git_credential, "ENDPOINT", hub.endpoint, only_if_present=True)
    http = huggingface_hub.utils._http
    if hasattr(http, "_HUB_ORIGINS") and hasattr(http, "_url_origin"):
        patcher.setattr(http, "_HUB_ORIGINS", frozenset(http._HUB_ORIGINS | {http._url_origin(hub.endpoint)}))

    # transformers (only if already imported; imported later, it reads the patched env / constants itself).
    modules_cache = _process_modules_cache_dir()
    for module_name in ("transformers.utils.hub", "transformers.dynamic_module_utils", "transformers.file_utils"):
        module = sys.modules.get(module_name)
        if module is not None:
            patcher.setattr(module, "HF_MODULES_CACHE", modules_cache, only_if_present=True)
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        patcher.setattr(transformers_hub, "_hf_api", None)


@contextlib.contextmanager
def serve_local_hub(home: str | os.PathLike | None = None, *, user: str = DEFAULT_USER, token: str = DEFAULT_TOKEN,
                    patch_process: bool = True):
    """Start a ``LocalHub`` and point clients at it; yields the hub (``.endpoint``, ``.env``, ``.stop()``, ...).

    ``home`` becomes ``HF_HOME`` (so the download cache is ``home/hub``); a fresh temp dir if not given.
    With ``patch_process`` (default), this process's environment and the import-time constants of
    ``huggingface_hub`` (and ``transformers`` if imported) are patched, and restored on exit.
    ``hub.env`` is a complete environment for ``subprocess.run(..., env=hub.env)``.
    """
    owns_home = home is None
    home = Path(tempfile.mkdtemp(prefix="localhub-home-")) if home is None else Path(home)
    home.mkdir(parents=True, exist_ok=True)
    hub = LocalHub(user=user, token=token).start()
    patcher = _Patcher()
    try:
        hub.home = home
        hub.cache_dir = home / "hub"
        env = {k: v for k, v in os.environ.items() if k not in _ENV_TO_REMOVE}
        env.update(_hub_environment(hub, home, str(home / "modules")))
        hub.env = env
        if patch_process:
            _reset_client_state()
            _patch_process(hub, home, patcher)
        yield hub
    finally:
        if patch_process:
            _reset_client_state()
        patcher.undo()
        hub.stop()
        if owns_home:
            shutil.rmtree(home, ignore_errors=True)


try:  # the pytest fixture (tests/conftest.py imports it)
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture
    def local_hub(tmp_path):
        """Function-scoped: a fresh LocalHub server, HF_HOME = ``tmp_path / "hf-home"``, patched clients."""
        with serve_local_hub(tmp_path / "hf-home") as hub:
            yield hub
