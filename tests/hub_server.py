"""A loopback stand-in for the Hugging Face Hub: enough of its HTTP API for huggingface_hub's snapshot_download.

Serves model repos from local folders under `HF_ENDPOINT=<server.url>`:
- `GET /api/models/{repo}[/revision/{rev}][?blobs=true]`: repo info with its commit and files (sizes, blob ids
  and LFS sha256 with `blobs`), as `HfApi.model_info` / `repo_info` read it;
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: file metadata (`X-Repo-Commit`, `ETag`, `Content-Length`); LFS files
  (`*.safetensors`) answer 302 to `/cdn/...` with `X-Linked-Etag` / `X-Linked-Size`, as the Hub does;
- `GET /cdn/{sha256}`: the LFS bytes, with `Range` requests (206) for resumed downloads.
Unknown repos, revisions and files get 404 with the Hub's `X-Error-Code`. Knobs for tests: per-file request and
byte counts, a connection cut once after N bytes, a slow transfer, a failing file; `stop()`.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
_CHUNK = 64 * 1024


@dataclass
class HubFile:
    """One file of a served repo."""

    name: str  # path inside the repo
    data: bytes
    lfs: bool

    @property
    def blob_id(self) -> str:
        """git's object id of the file (the Hub's ETag for a regular file)."""
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        """The LFS object id (the Hub's X-Linked-Etag for an LFS file)."""
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class FileStats:
    """What the server did for one file."""

    heads: int = 0  # metadata (HEAD) requests
    gets: int = 0  # download (GET) requests
    bytes_sent: int = 0  # body bytes written, over all GETs
    ranges: list = field(default_factory=list)  # the Range header of each GET (None when absent)


class HubServer:
    """A threaded HTTP server on 127.0.0.1 (free port) that serves repos added with add_repo()."""

    def __init__(self):
        self.repos: dict[str, tuple[str, dict[str, HubFile]]] = {}  # repo id -> (commit, files by name)
        self.stats: dict[str, FileStats] = defaultdict(FileStats)  # "repo/file" -> stats
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._cuts: dict[str, int] = {}  # "repo/file" -> bytes to send before dropping the connection once
        self._slow: dict[str, float] = {}  # "repo/file" -> seconds one whole transfer should take
        self._failing: dict[str, int] = {}  # "repo/file" -> HTTP status its downloads answer
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add_repo(self, repo_id: str, folder: Path, lfs_patterns=LFS_PATTERNS) -> str:
        """Serve every file under folder as repo_id at revision main; returns the repo's (fake) commit."""
        files = {}
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            files[name] = HubFile(name, path.read_bytes(), any(fnmatch.fnmatch(name, p) for p in lfs_patterns))
        commit = hashlib.sha1("".join(f.blob_id for f in files.values()).encode()).hexdigest()
        self.repos[repo_id] = (commit, files)
        return commit

    def cut_once(self, repo_id: str, name: str, after_bytes: int) -> None:
        """Drop the connection of the next download of this file after sending after_bytes of it."""
        self._cuts[f"{repo_id}/{name}"] = after_bytes

    def slow(self, repo_id: str, name: str, seconds: float) -> None:
        """Spread each whole download of this file over about `seconds` (so progress can be watched)."""
        self._slow[f"{repo_id}/{name}"] = seconds

    def fail(self, repo_id: str, name: str, status: int | None = 500) -> None:
        """Answer downloads of this file with an HTTP error (None: serve it again)."""
        key = f"{repo_id}/{name}"
        if status is None:
            self._failing.pop(key, None)
        else:
            self._failing[key] = status

    def file_stats(self, repo_id: str, name: str) -> FileStats:
        """Requests and bytes served so far for one file."""
        return self.stats[f"{repo_id}/{name}"]

    def stop(self) -> None:
        """Stop answering and close the listening socket (the port then refuses connections)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------------ request handling

    def find(self, repo_id: str, revision: str):
        """(commit, files) of repo_id at revision, or the Hub's error code."""
        if repo_id not in self.repos:
            return "RepoNotFound"
        commit, files = self.repos[repo_id]
        return (commit, files) if revision in ("main", commit) else "RevisionNotFound"

    def repo_info(self, repo_id: str, revision: str, blobs: bool):
        """The JSON body of /api/models/..., or an error code."""
        found = self.find(repo_id, revision)
        if isinstance(found, str):
            return found
        commit, files = found
        siblings = []
        for f in files.values():
            entry = {"rfilename": f.name}
            if blobs:
                entry.update(size=len(f.data), blobId=f.blob_id)
                if f.lfs:
                    entry["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        return {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings}

    def blob(self, sha256: str) -> tuple[str, HubFile] | None:
        """(repo id, file) of the LFS object with this sha256."""
        for repo_id, (_, files) in self.repos.items():
            for f in files.values():
                if f.lfs and f.sha256 == sha256:
                    return repo_id, f
        return None

    def take_cut(self, key: str) -> int | None:
        """The byte count after which to drop this download, once."""
        with self._lock:
            return self._cuts.pop(key, None)

    def failing(self, key: str) -> int | None:
        """The HTTP status downloads of this file answer, if they fail."""
        return self._failing.get(key)

    def seconds(self, key: str) -> float:
        """How long one whole transfer of this file should take (0: as fast as possible)."""
        return self._slow.get(key, 0.0)


class _Handler(BaseHTTPRequestHandler):
    """One request to the stand-in Hub (a subclass sets `hub`)."""

    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool):
        self.hub.requests.append((self.command, self.path))
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if api and not head:
            self._api(api[1], api[2] or "main", "blobs=true" in parts.query.lower())
        elif resolve:
            self._resolve(resolve[1], resolve[2], resolve[3], head)
        elif cdn and self.hub.blob(cdn[1]):
            repo_id, f = self.hub.blob(cdn[1])
            self._send_file(repo_id, f, head, etag=f.sha256)
        else:
            self._error(404, "EntryNotFound")

    def _api(self, repo_id: str, revision: str, blobs: bool):
        info = self.hub.repo_info(repo_id, revision, blobs)
        if isinstance(info, str):
            return self._error(404, info)
        self._reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool):
        found = self.hub.find(repo_id, revision)
        if isinstance(found, str):
            return self._error(404, found)
        commit, files = found
        if name not in files:
            return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit})
        f = files[name]
        if head:
            self.hub.file_stats(repo_id, name).heads += 1
        headers = {"X-Repo-Commit": commit, "ETag": f'"{f.blob_id}"'}
        if f.lfs:  # the Hub redirects LFS files to its CDN and names the blob in X-Linked-*
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)),
                            "Location": f"{self.hub.url}/cdn/{f.sha256}"})
            return self._reply(302, b"", headers, head=head)
        self._send_file(repo_id, f, head, etag=f.blob_id, extra=headers)

    def _send_file(self, repo_id: str, f: HubFile, head: bool, etag: str, extra=None):
        key = f"{repo_id}/{f.name}"
        headers = dict(extra or {}, ETag=f'"{etag}"', **{"Accept-Ranges": "bytes"})
        if head:
            return self._reply(200, b"", dict(headers, **{"Content-Length": str(len(f.data))}), head=True)
        if self.hub.failing(key):
            return self._error(self.hub.failing(key), "")
        stats = self.hub.file_stats(repo_id, f.name)
        stats.gets += 1
        stats.ranges.append(self.headers.get("Range"))
        start, status = _range_start(self.headers.get("Range"), len(f.data))
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
        body = f.data[start:]
        self.send_response(status)
        for k, v in dict(headers, **{"Content-Length": str(len(body))}).items():
            self.send_header(k, v)
        self.end_headers()
        self._stream(body, stats, self.hub.take_cut(key), self.hub.seconds(key) * len(body) / max(1, len(f.data)))

    def _stream(self, body: bytes, stats: FileStats, cut: int | None, seconds: float):
        """Write body in chunks (paced over `seconds`); after `cut` bytes drop the connection instead."""
        limit = len(body) if cut is None else min(cut, len(body))
        pause = seconds / max(1, -(-limit // _CHUNK))
        for at in range(0, limit, _CHUNK):
            chunk = body[at:min(at + _CHUNK, limit)]
            self.wfile.write(chunk)
            stats.bytes_sent += len(chunk)
            if pause:
                self.wfile.flush()
                time.sleep(pause)
        self.wfile.flush()
        if cut is not None:  # an interrupted transfer: the client sees the body end early
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _error(self, status: int, code: str, extra=None):
        headers = dict(extra or {}, **{"Content-Type": "application/json"})
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, json.dumps({"error": code or "error"}).encode(), headers)

    def _reply(self, status: int, body: bytes, headers: dict, head: bool = False):
        self.send_response(status)
        headers = dict(headers)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)



def _range_start(header: str | None, size: int) -> tuple[int, int]:
    """(first byte, status) for a `Range: bytes=N-` header; whole file (200) otherwise."""
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    if match and int(match[1]) < size:
        return int(match[1]), 206
    return 0, 200


class SilentEndpoint:
    """A listening socket that accepts connections and never answers: any request to it would hang."""

    def __init__(self):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.connections = 0  # how many clients connected
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            self._held.append(conn)  # kept open and silent until close()

    def close(self) -> None:
        """Stop listening and drop every held connection."""
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()
