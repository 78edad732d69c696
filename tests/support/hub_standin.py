"""A local stand-in for the Hugging Face Hub HTTP API, for offline tests of Hub workflows.

It speaks the subset of the Hub API that `huggingface_hub` (2.x) and `datasets` use to create repos, push
commits (regular files inline, large files through the Git LFS "basic" transfer), list trees, refs and
commits, and download files (`resolve`, with `Range`). Repos (models, datasets, spaces) live on disk:
content-addressed blobs shared by all repos, one JSON file per commit (full file manifest, parents), and a
`repo.json` per repo holding branches and tags.

Point the clients at it *before* importing them::

    HF_ENDPOINT=http://127.0.0.1:PORT HF_TOKEN=anything HF_HUB_DISABLE_XET=1

(Xet must be disabled: with it, LFS uploads go to a Xet CAS service that this server does not provide.)
Run it standalone with ``python tests/support/hub_standin.py --port 8765 --root ./hub``, or in-process::

    >>> import tempfile
    >>> from pathlib import Path
    >>> with HubStandin(Path(tempfile.mkdtemp())) as hub:
    ...     hub.endpoint.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from axdata.safe_yaml import UntrustedYAMLError, card_metadata

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GITATTRIBUTES", "HubError", "HubStandin", "HubStore"]

_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Files above this size go through LFS whatever their name, as on the Hub.
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_CHUNK = 1 << 20

# What the Hub writes into every new repo: these patterns decide which files the preupload step sends to LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in [
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.ftz",
        "*.gguf",
        "*.gz",
        "*.h5",
        "*.joblib",
        "*.lz4",
        "*.mds",
        "*.mlmodel",
        "*.model",
        "*.msgpack",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.ot",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.pt",
        "*.pth",
        "*.rar",
        "*.safetensors",
        "saved_model/**/*",
        "*.tar.*",
        "*.tar",
        "*.tflite",
        "*.tgz",
        "*.wasm",
        "*.xz",
        "*.zip",
        "*.zst",
        "*tfevents*",
    ]
)


class HubError(Exception):
    """An HTTP error carrying the Hub's `X-Error-Code`, which the clients map to their exception types."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra  # more fields of the JSON error body


def _repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(
        404, "RepoNotFound", f"{repo_type} repository '{repo_id}' does not exist on this stand-in"
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _write_atomic(path: Path, data: bytes) -> None:
    # Readers never lock: a rename guarantees they see the old or the new state, never a torn file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


@dataclass(frozen=True)
class _Repo:
    type: str  # model | dataset | space
    id: str  # namespace/name
    dir: Path

    @property
    def url_path(self) -> str:
        return _URL_PREFIX[self.type] + self.id


class HubStore:
    """On-disk repos, blobs and commits. Every mutation of one repo holds that repo's lock."""

    def __init__(self, root: Path, user: str = "user") -> None:
        self.root = Path(root)
        self.user = user
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        for folder in (self._blobs, self._tmp, self.root / "repos"):
            folder.mkdir(parents=True, exist_ok=True)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- repos ------------------------------------------------------------------------------------------
    def _repo_lock(self, repo_type: str, repo_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((repo_type, repo_id), threading.Lock())

    def _repo_path(self, repo_type: str, repo_id: str) -> _Repo:
        namespace, _, name = repo_id.partition("/")
        if not namespace or not name or "/" in name or namespace in (".", "..") or name in (".", ".."):
            raise HubError(400, "InvalidRepoId", f"invalid repo id '{repo_id}': expected 'namespace/name'")
        return _Repo(repo_type, repo_id, self.root / "repos" / repo_type / namespace / name)

    def repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repo_path(repo_type, repo_id)
        if not (repo.dir / "repo.json").is_file():
            raise _repo_not_found(repo_type, repo_id)
        return repo

    def meta(self, repo: _Repo) -> dict[str, Any]:
        try:
            return json.loads((repo.dir / "repo.json").read_text())
        except FileNotFoundError:
            raise _repo_not_found(repo.type, repo.id) from None

    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None, base: str) -> _Repo:
        repo = self._repo_path(repo_type, repo_id)
        with self._repo_lock(repo_type, repo_id):
            if (repo.dir / "repo.json").is_file():
                # `create_repo(exist_ok=True)` reads the repo URL from the body of this 409.
                raise HubError(
                    409,
                    "RepoExists",
                    f"You already created this {repo_type} repo: '{repo_id}'",
                    url=f"{base}/{repo.url_path}",
                )
            files = {".gitattributes": self._regular_entry(DEFAULT_GITATTRIBUTES.encode())}
            commit_id = self._write_commit(repo, [], files, "initial commit", "")
            meta = {"createdAt": _now(), "private": private, "branches": {"main": commit_id}, "tags": {}}
            if sdk is not None:
                meta["sdk"] = sdk
            _write_json(repo.dir / "repo.json", meta)
        logger.info("created %s repo %s", repo_type, repo_id)
        return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        repo = self.repo(repo_type, repo_id)
        with self._repo_lock(repo_type, repo_id):
            # Rename first so that the repo disappears at once, even if removing its files takes a while.
            trash = self._tmp / f"deleted-{uuid.uuid4().hex}"
            os.replace(repo.dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted %s repo %s", repo_type, repo_id)

    # -- commits and refs -------------------------------------------------------------------------------
    def commit(self, repo: _Repo, commit_id: str) -> dict[str, Any]:
        return json.loads((repo.dir / "commits" / f"{commit_id}.json").read_text())

    def resolve(self, repo: _Repo, revision: str) -> dict[str, Any]:
        meta = self.meta(repo)
        commit_id = meta["branches"].get(revision) or meta["tags"].get(revision)
        if (
            commit_id is None
            and re.fullmatch(r"[0-9a-f]{40}", revision)
            and (repo.dir / "commits" / f"{revision}.json").is_file()
        ):
            commit_id = revision
        if commit_id is None:
            raise HubError(
                404, "RevisionNotFound", f"Invalid rev id: {revision} in {repo.type} repo '{repo.id}'"
            )
        return self.commit(repo, commit_id)

    def _write_commit(
        self, repo: _Repo, parents: list[str], files: dict[str, dict[str, Any]], title: str, message: str
    ) -> str:
        record = {
            "parents": parents,
            "files": files,
            "title": title,
            "message": message,
            "date": _now(),
            "author": self.user,
        }
        # The nonce keeps two identical commits made in the same second distinct, as git's would be.
        commit_id = hashlib.sha1(
            json.dumps({**record, "nonce": uuid.uuid4().hex}, sort_keys=True).encode()
        ).hexdigest()
        _write_json(repo.dir / "commits" / f"{commit_id}.json", {"id": commit_id, **record})
        return commit_id

    def apply_commit(
        self, repo: _Repo, branch: str, header: dict[str, Any], operations: list[tuple[str, dict[str, Any]]]
    ) -> str:
        with self._repo_lock(repo.type, repo.id):
            meta = self.meta(repo)
            if branch not in meta["branches"]:
                raise HubError(404, "RevisionNotFound", f"Branch '{branch}' does not exist in '{repo.id}'")
            head = meta["branches"][branch]
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise HubError(
                    412,
                    "PreconditionFailed",
                    f"A commit has happened since {parent}: '{branch}' is at {head}. Refresh and retry.",
                )
            files = dict(self.commit(repo, head)["files"])
            for key, value in operations:
                self._apply_operation(files, key, value)
            commit_id = self._write_commit(
                repo, [head], files, header.get("summary", ""), header.get("description", "")
            )
            meta["branches"][branch] = commit_id
            meta["lastModified"] = _now()
            _write_json(repo.dir / "repo.json", meta)
        logger.info("commit %s on %s@%s (%d operations)", commit_id[:8], repo.id, branch, len(operations))
        return commit_id

    def _apply_operation(self, files: dict[str, dict[str, Any]], key: str, value: dict[str, Any]) -> None:
        path = str(value.get("path", "")).strip("/")
        if not path:
            raise HubError(400, "BadRequest", f"commit operation '{key}' has no path")
        if key == "file":
            if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
                raise HubError(400, "BadRequest", f"'{path}' needs base64 'content'")
            files[path] = self._regular_entry(base64.b64decode(value["content"]))
        elif key == "lfsFile":
            oid = str(value.get("oid", ""))
            blob = self.blob_path(oid) if re.fullmatch(r"[0-9a-f]{64}", oid) else None
            if blob is None or not blob.is_file():
                raise HubError(400, "LfsObjectMissing", f"LFS object {oid} for '{path}' was never uploaded")
            size = blob.stat().st_size
            pointer = _lfs_pointer(oid, size)
            files[path] = {
                "sha256": oid,
                "size": size,
                "oid": _git_blob_oid(pointer),
                "lfs": True,
                "pointerSize": len(pointer),
            }
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, "EntryNotFound", f"cannot delete '{path}': no such file")
        elif key == "deletedFolder":
            doomed = [name for name in files if name.startswith(path + "/")]
            if not doomed:
                raise HubError(404, "EntryNotFound", f"cannot delete folder '{path}': no such folder")
            for name in doomed:
                del files[name]
        else:
            raise HubError(400, "BadRequest", f"unsupported commit operation '{key}'")

    def open_pull_request(
        self, repo: _Repo, base: str, header: dict[str, Any], operations: list[tuple[str, dict[str, Any]]]
    ) -> tuple[int, str]:
        """A commit on a new `refs/pr/<n>` ref started at `base`, recorded as an open pull request (as the Hub
        does for `create_commit(create_pr=True)`); returns (n, commit id)."""
        with self._repo_lock(repo.type, repo.id):
            meta = self.meta(repo)
            start = self.resolve(repo, base)["id"]
            number = len(meta.get("pullRequests", [])) + 1
            meta["branches"][f"refs/pr/{number}"] = start
            meta.setdefault("pullRequests", []).append({
                "num": number, "title": header.get("summary", "") or f"PR #{number}", "author": self.user,
                "createdAt": _now(), "status": "open",
            })
            _write_json(repo.dir / "repo.json", meta)
        commit_id = self.apply_commit(repo, f"refs/pr/{number}", {**header, "parentCommit": None}, operations)
        return number, commit_id

    def set_ref(self, repo: _Repo, kind: str, name: str, target: str | None, *, create: bool) -> None:
        """Create (`create=True`) or delete a branch or tag (`kind` is 'branches' or 'tags')."""
        with self._repo_lock(repo.type, repo.id):
            meta = self.meta(repo)
            refs = meta[kind]
            label = "Branch" if kind == "branches" else "Tag"
            if create:
                # One namespace for both, so that a revision name never means two things.
                if name in meta["branches"] or name in meta["tags"]:
                    raise HubError(409, "RefExists", f"{label} '{name}' already exists in '{repo.id}'")
                refs[name] = target
            else:
                if name not in refs:
                    raise HubError(404, "RevisionNotFound", f"{label} '{name}' does not exist in '{repo.id}'")
                if kind == "branches" and name == "main":
                    raise HubError(403, "Forbidden", "the 'main' branch cannot be deleted")
                del refs[name]
            _write_json(repo.dir / "repo.json", meta)

    def history(self, repo: _Repo, commit: dict[str, Any]) -> Iterator[dict[str, Any]]:
        while True:
            yield commit
            if not commit["parents"]:
                return
            commit = self.commit(repo, commit["parents"][0])

    # -- blobs ------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def _regular_entry(self, content: bytes) -> dict[str, Any]:
        sha256 = hashlib.sha256(content).hexdigest()
        blob = self.blob_path(sha256)
        if not blob.is_file():
            _write_atomic(blob, content)
        return {"sha256": sha256, "size": len(content), "oid": _git_blob_oid(content), "lfs": False}

    def store_lfs_object(self, chunks: Iterator[bytes], oid: str, size: int | None) -> None:
        """Stream an upload into the blob store, keeping it only if its sha256 (and size) match."""
        digest = hashlib.sha256()
        received = 0
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="lfs-")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    received += len(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != oid:
                raise HubError(
                    400,
                    "LfsChecksumMismatch",
                    f"uploaded content has sha256 {digest.hexdigest()}, expected {oid}",
                )
            if size is not None and received != size:
                raise HubError(
                    400, "LfsSizeMismatch", f"uploaded {received} bytes for {oid}, expected {size}"
                )
            blob = self.blob_path(oid)
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, blob)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def lfs_patterns(self, commit: dict[str, Any]) -> list[str]:
        entry = commit["files"].get(".gitattributes")
        if entry is None:
            return []
        text = self.blob_path(entry["sha256"]).read_text(errors="replace")
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line.split()[1:]]


@dataclass
class _Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: tuple[Path, int, int] | None = None  # path, offset, length: streamed instead of `body`

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> _Response:
        return cls(status, {"Content-Type": "application/json"}, json.dumps(obj).encode())


class _RequestBody:
    """The request body, read lazily; `Content-Length` or chunked (httpx streams file uploads chunked)."""

    def __init__(self, rfile: BinaryIO, headers: Any) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._length = int(headers.get("Content-Length") or 0)
        # One generator for the whole body: a reader that stops early leaves the rest to `drain`.
        self._chunks = self._read()
        self.complete = False

    def _read(self) -> Iterator[bytes]:
        if self._chunked:
            while size := int(self._rfile.readline(65537).split(b";")[0].strip() or b"0", 16):
                yield from self._read_exactly(size)
                self._rfile.readline()  # the CRLF closing each chunk
            while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
        else:
            yield from self._read_exactly(self._length)
        self.complete = True

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            chunk = self._rfile.read(min(_CHUNK, size))
            if not chunk:
                raise HubError(400, "BadRequest", "request body ended early")
            size -= len(chunk)
            yield chunk

    def chunks(self) -> Iterator[bytes]:
        return self._chunks

    def read(self) -> bytes:
        return b"".join(self._chunks)

    def json(self) -> Any:
        raw = self.read()
        try:
            return json.loads(raw) if raw else {}
        except ValueError as err:
            raise HubError(400, "BadRequest", f"request body is not JSON: {err}") from None

    def drain(self) -> None:
        # Unread body bytes would be parsed as the next request on this keep-alive connection.
        for _ in self._chunks:
            pass


@dataclass
class _Request:
    base: str  # scheme://host:port as the client addressed us, for the URLs we hand back
    body: _RequestBody
    query: dict[str, list[str]]
    headers: Any  # http.client.HTTPMessage


_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"/api/(?P<types>models|datasets|spaces)/" + _REPO
_GIT_REPO = r"/(?:(?P<prefix>datasets|spaces)/)?" + _REPO
_Handler = Callable[..., _Response]


class _Api:
    """Route handlers. Each takes the decoded URL groups and returns a `_Response` or raises `HubError`."""

    def __init__(self, store: HubStore) -> None:
        self.store = store
        self.routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in (
                ("GET", r"/api/whoami-v2", self.whoami),
                ("POST", r"/api/validate-yaml", self.validate_yaml),
                ("POST", r"/api/repos/create", self.create_repo),
                ("DELETE", r"/api/repos/delete", self.delete_repo),
                ("GET", _API_REPO + r"(?:/revision/(?P<rev>[^/]+))?", self.repo_info),
                ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)", self.preupload),
                ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)", self.commit),
                ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self.tree),
                ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)", self.paths_info),
                ("GET", _API_REPO + r"/refs", self.refs),
                ("GET", _API_REPO + r"/discussions", self.discussions),
                ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)", self.commits),
                ("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)", self.create_branch),
                ("DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)", self.delete_branch),
                ("POST", _API_REPO + r"/tag/(?P<rev>[^/]+)", self.create_tag),
                ("DELETE", _API_REPO + r"/tag/(?P<tag>[^/]+)", self.delete_tag),
                ("POST", _GIT_REPO + r"\.git/info/lfs/objects/batch", self.lfs_batch),
                ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
                ("GET", _GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
                ("HEAD", _GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            )
        ]

    # -- helpers ----------------------------------------------------------------------------------------
    def _repo(self, groups: dict[str, str]) -> _Repo:
        if "types" in groups:
            repo_type = _API_TYPES[groups["types"]]
        else:
            repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[groups.get("prefix")]
        return self.store.repo(repo_type, f"{groups['ns']}/{groups['name']}")

    @staticmethod
    def _entry(path: str, info: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": info["oid"], "size": info["size"], "path": path}
        if info["lfs"]:
            entry["lfs"] = {"oid": info["sha256"], "size": info["size"], "pointerSize": info["pointerSize"]}
        return entry

    @staticmethod
    def _folder_entry(path: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        listing = sorted((name, info["oid"]) for name, info in files.items() if name.startswith(path + "/"))
        oid = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _listing(
        self, files: dict[str, dict[str, Any]], folder: str, recursive: bool
    ) -> list[dict[str, Any]]:
        prefix = folder + "/" if folder else ""
        if folder and not any(name.startswith(prefix) for name in files):
            raise HubError(404, "EntryNotFound", f"folder '{folder}' does not exist at this revision")
        entries: dict[str, dict[str, Any]] = {}
        for name, info in files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):
                sub = prefix + "/".join(parts[:i])
                entries.setdefault(sub, self._folder_entry(sub, files))
            if recursive or len(parts) == 1:
                entries[name] = self._entry(name, info)
        return [entries[key] for key in sorted(entries)]

    # -- identity, validation, repos --------------------------------------------------------------------
    def whoami(self, req: _Request) -> _Response:
        user = self.store.user
        return _Response.json(
            {
                "type": "user",
                "id": user,
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
            }
        )

    def validate_yaml(self, req: _Request) -> _Response:
        req.body.drain()
        return _Response.json({"errors": [], "warnings": []})

    def create_repo(self, req: _Request) -> _Response:
        payload = req.body.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, "BadRequest", f"unsupported repo type '{repo_type}'")
        repo_id = f"{payload.get('organization') or self.store.user}/{payload.get('name')}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = self.store.create_repo(repo_type, repo_id, private, payload.get("sdk"), req.base)
        return _Response.json({"url": f"{req.base}/{repo.url_path}", "name": repo.id})

    def delete_repo(self, req: _Request) -> _Response:
        payload = req.body.json()
        repo_id = f"{payload.get('organization') or self.store.user}/{payload.get('name')}"
        self.store.delete_repo(payload.get("type") or "model", repo_id)
        return _Response.json({})

    def repo_info(self, req: _Request, rev: str | None = None, **groups: str) -> _Response:
        repo = self._repo(groups)
        meta = self.store.meta(repo)
        commit = self.store.resolve(repo, rev or "main")
        files = commit["files"]
        info: dict[str, Any] = {
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit["id"],
            "private": meta["private"],
            "gated": False,
            "disabled": False,
            "createdAt": meta["createdAt"],
            "lastModified": meta.get("lastModified", meta["createdAt"]),
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [
                {
                    "rfilename": name,
                    "size": info["size"],
                    "blobId": info["oid"],
                    **(
                        {
                            "lfs": {
                                "sha256": info["sha256"],
                                "size": info["size"],
                                "pointerSize": info["pointerSize"],
                            }
                        }
                        if info["lfs"]
                        else {}
                    ),
                }
                for name, info in sorted(files.items())
            ],
        }
        if repo.type == "space":
            info["sdk"] = meta.get("sdk")
        if "README.md" in files:
            card_data = self._card_data(self.store.blob_path(files["README.md"]["sha256"]).read_text())
            if card_data is not None:
                info["cardData"] = card_data
        return _Response.json(info)

    @staticmethod
    def _card_data(readme: str) -> dict[str, Any] | None:
        try:  # an uploaded card is untrusted: no aliases, bounded size
            return card_metadata(readme, "README.md") or None
        except UntrustedYAMLError as err:
            logger.warning("cardData left out: %s", err)
            return None

    # -- uploads ----------------------------------------------------------------------------------------
    def preupload(self, req: _Request, rev: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        payload = req.body.json()
        commit = self.store.resolve(repo, rev)
        patterns = self.store.lfs_patterns(commit)
        answers = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            lfs = (
                item.get("size", 0) > _LFS_SIZE_THRESHOLD
                or b"\0" in sample
                or any(fnmatch.fnmatch(path if "/" in p else path.rsplit("/", 1)[-1], p) for p in patterns)
            )
            answer = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit["files"].get(path)
            if existing is not None and (lfs or not existing["lfs"]):
                # Lets the client skip unchanged files: sha256 for LFS, git blob id for regular files.
                answer["oid"] = existing["sha256"] if lfs else existing["oid"]
            answers.append(answer)
        return _Response.json({"files": answers, "commitOid": commit["id"]})

    def lfs_batch(self, req: _Request, **groups: str) -> _Response:
        self._repo(groups)
        payload = req.body.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "BadRequest", "the stand-in serves LFS downloads through /resolve only")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append(
                    {"oid": oid, "size": size, "error": {"code": 422, "message": "invalid sha256 oid"}}
                )
                continue
            answer: dict[str, Any] = {"oid": oid, "size": size}
            if not self.store.blob_path(oid).is_file():
                answer["actions"] = {
                    "upload": {"href": f"{req.base}/_lfs/{oid}?size={size}", "expires_in": 3600}
                }
            objects.append(answer)
        response = _Response.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        response.headers["Content-Type"] = "application/vnd.git-lfs+json"
        return response

    def lfs_upload(self, req: _Request, oid: str) -> _Response:
        size = int(req.query["size"][0]) if "size" in req.query else None
        self.store.store_lfs_object(req.body.chunks(), oid, size)
        return _Response(200)

    def commit(self, req: _Request, rev: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        create_pr = req.query.get("create_pr", ["0"])[0] not in ("0", "false", "False")
        try:
            lines = [json.loads(line) for line in req.body.read().splitlines() if line.strip()]
            operations = [(str(line["key"]), dict(line["value"])) for line in lines]
        except (ValueError, KeyError, TypeError) as err:
            raise HubError(
                400, "BadRequest", f"commit payload is not ndjson of {{key, value}} lines: {err!r}"
            ) from None
        if not operations or operations[0][0] != "header":
            raise HubError(400, "BadRequest", "commit payload must start with a 'header' line")
        pull_request_url = None
        if create_pr:
            number, commit_id = self.store.open_pull_request(repo, rev, operations[0][1], operations[1:])
            pull_request_url = f"{req.base}/{repo.url_path}/discussions/{number}"
        else:
            commit_id = self.store.apply_commit(repo, rev, operations[0][1], operations[1:])
        return _Response.json(
            {
                "commitUrl": f"{req.base}/{repo.url_path}/commit/{commit_id}",
                "commitOid": commit_id,
                "pullRequestUrl": pull_request_url,
                "success": True,
            }
        )

    def discussions(self, req: _Request, **groups: str) -> _Response:
        repo = self._repo(groups)
        pull_requests = self.store.meta(repo).get("pullRequests", [])
        listed = [
            {**pr, "author": {"name": pr["author"]}, "isPullRequest": True,
             "repo": {"name": repo.id, "type": repo.type}}
            for pr in reversed(pull_requests)
        ]
        page = int(req.query.get("p", ["0"])[0])
        return _Response.json({"discussions": listed if page == 0 else [], "count": len(listed), "start": 0,
                               "numClosedDiscussions": 0})

    # -- listing ----------------------------------------------------------------------------------------
    def tree(self, req: _Request, rev: str, path: str | None = None, **groups: str) -> _Response:
        repo = self._repo(groups)
        commit = self.store.resolve(repo, rev)
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        return _Response.json(self._listing(commit["files"], (path or "").strip("/"), recursive))

    def paths_info(self, req: _Request, rev: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        form = parse_qs(req.body.read().decode())
        files = self.store.resolve(repo, rev)["files"]
        entries = []
        for path in (p.strip("/") for p in form.get("paths", [])):
            if path in files:
                entries.append(self._entry(path, files[path]))
            elif any(name.startswith(path + "/") for name in files):
                entries.append(self._folder_entry(path, files))
        return _Response.json(entries)

    def refs(self, req: _Request, **groups: str) -> _Response:
        meta = self.store.meta(self._repo(groups))

        def refs_of(kind: str, prefix: str) -> list[dict[str, str]]:
            return [
                {"name": name, "ref": f"{prefix}{name}", "targetCommit": target}
                for name, target in sorted(meta[kind].items()) if not name.startswith("refs/pr/")
            ]

        pull_requests = [
            {"name": name.removeprefix("refs/"), "ref": name, "targetCommit": target}
            for name, target in sorted(meta["branches"].items()) if name.startswith("refs/pr/")
        ]
        return _Response.json(
            {
                "branches": refs_of("branches", "refs/heads/"),
                "tags": refs_of("tags", "refs/tags/"),
                "converts": [],
                "pullRequests": pull_requests,
            }
        )

    def commits(self, req: _Request, rev: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        return _Response.json(
            [
                {
                    "id": c["id"],
                    "title": c["title"],
                    "message": c["message"],
                    "date": c["date"],
                    "authors": [{"user": c["author"]}],
                }
                for c in self.store.history(repo, self.store.resolve(repo, rev))
            ]
        )

    # -- refs -------------------------------------------------------------------------------------------
    def create_branch(self, req: _Request, branch: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        payload = req.body.json()
        if branch.startswith("refs/"):
            raise HubError(400, "BadRequest", f"invalid branch name '{branch}'")
        target = self.store.resolve(repo, payload.get("startingPoint") or "main")["id"]
        self.store.set_ref(repo, "branches", branch, target, create=True)
        return _Response.json({})

    def delete_branch(self, req: _Request, branch: str, **groups: str) -> _Response:
        self.store.set_ref(self._repo(groups), "branches", branch, None, create=False)
        return _Response.json({})

    def create_tag(self, req: _Request, rev: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        tag = req.body.json().get("tag")
        if not tag or tag.startswith("refs/"):
            raise HubError(400, "BadRequest", f"invalid tag name '{tag}'")
        self.store.set_ref(repo, "tags", tag, self.store.resolve(repo, rev)["id"], create=True)
        return _Response.json({})

    def delete_tag(self, req: _Request, tag: str, **groups: str) -> _Response:
        self.store.set_ref(self._repo(groups), "tags", tag, None, create=False)
        return _Response.json({})

    # -- downloads --------------------------------------------------------------------------------------
    def resolve(self, req: _Request, rev: str, path: str, **groups: str) -> _Response:
        repo = self._repo(groups)
        commit = self.store.resolve(repo, rev)
        info = commit["files"].get(path)
        if info is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on '{rev}' of '{repo.id}'")
        size = info["size"]
        headers = {
            "X-Repo-Commit": commit["id"],
            "ETag": f'"{info["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if info["lfs"]:
            headers.update({"X-Linked-Etag": f'"{info["sha256"]}"', "X-Linked-Size": str(size)})
        blob = self.store.blob_path(info["sha256"])
        range_header = req.headers.get("Range")
        if range_header is None:
            return _Response(200, headers, file=(blob, 0, size))
        span = self._parse_range(range_header, size)
        if span is None:
            headers["Content-Range"] = f"bytes */{size}"
            return _Response(416, headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return _Response(206, headers, file=(blob, start, end - start + 1))

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int] | None:
        match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
        if match is None or match.group(1) == match.group(2) == "":
            return None
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        return (start, end) if start <= end and start < size else None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "axbench-hub-standin"
    # Idle keep-alive connections give their thread back after this many seconds.
    timeout = 120
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self.server.standin._log_request(self.command, split.path)
        body = _RequestBody(self.rfile, self.headers)
        request = _Request(
            f"http://{self.headers.get('Host') or self.server.standin.netloc}",
            body,
            parse_qs(split.query),
            self.headers,
        )
        try:
            response = self._route(split.path, request)
        except HubError as err:
            response = _Response.json({"error": err.message, **err.extra}, err.status)
            # Header values must be latin-1; the JSON body keeps the full message.
            response.headers.update(
                {
                    "X-Error-Code": err.code,
                    "X-Error-Message": err.message.encode("latin-1", "replace").decode("latin-1"),
                }
            )
        except Exception as err:  # a server bug must reach the client as a 500, not a dropped connection
            logger.exception("hub stand-in failed on %s %s", self.command, self.path)
            response = _Response.json({"error": f"stand-in internal error: {err!r}"}, 500)
        try:
            body.drain()
        except (HubError, ValueError, OSError):
            pass
        # A malformed or half-read body leaves the connection out of step: answer, then close it.
        self.close_connection = self.close_connection or not body.complete
        try:
            self._send(response)
        except OSError:  # the client hung up
            self.close_connection = True

    def _route(self, path: str, request: _Request) -> _Response:
        for method, pattern, handler in self.server.standin.api.routes:
            match = pattern.fullmatch(path) if method == self.command else None
            if match is None:
                continue
            groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
            return handler(request, **groups)
        raise HubError(404, "RouteNotFound", f"the Hub stand-in does not implement {self.command} {path}")

    def _send(self, response: _Response) -> None:
        length = response.file[2] if response.file is not None else len(response.body)
        self.send_response(response.status)
        if self.close_connection:
            self.send_header("Connection", "close")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        path, offset, remaining = response.file
        with path.open("rb") as handle:
            handle.seek(offset)
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: HubStandin


class HubStandin:
    """A Hub stand-in serving `root` on `host:port` (0 picks a free port) from a background thread.

    `requests` records `(method, path)` of every request, for tests that assert on client behaviour.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, user: str = "user") -> None:
        self.store = HubStore(root, user=user)
        self.api = _Api(self.store)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._requests: list[tuple[str, str]] = []
        self._requests_lock = threading.Lock()

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.netloc}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def _log_request(self, method: str, path: str) -> None:
        with self._requests_lock:
            self._requests.append((method, path))

    def start(self) -> HubStandin:
        if self._server is not None:
            raise RuntimeError(f"hub stand-in already running at {self.endpoint}")
        self._server = _Server((self.host, self.port), _RequestHandler)
        self._server.standin = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        logger.info("hub stand-in serving %s at %s", self.store.root, self.endpoint)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve a local Hugging Face Hub stand-in (for offline tests)."
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="folder holding the repos (created if missing)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--user", default="user", help="namespace for repos created without one")
    args = parser.parse_args(argv)
    # Run as a program: show this module's request log on stderr (the library itself never configures logging).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    hub = HubStandin(args.root, host=args.host, port=args.port, user=args.user).start()
    print(f"HF_ENDPOINT={hub.endpoint} HF_HUB_DISABLE_XET=1 (root: {args.root})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
