"""A local stand-in for the Hugging Face Hub's file API (tornado on loopback), and a hub-layout cache builder.

Serves what huggingface_hub's `model_info`, `snapshot_download` and `hf_hub_download` ask for:
`GET /api/models/{repo}[/revision/{rev}]` (siblings with sizes, card data with the licence),
`GET /api/models/{repo}/tree/{rev}` (the file list) and
`HEAD`/`GET /{repo}/resolve/{rev}/{path}` (commit, ETag and size headers, then the bytes).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path

import tornado.web
from tornado.testing import bind_unused_port

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Info(tornado.web.RequestHandler):
    def initialize(self, repos):
        self.repos = repos

    def get(self, repo, _revision=None):
        if repo not in self.repos:
            self.set_status(404)
            self.set_header("X-Error-Code", "RepoNotFound")
            return self.finish({"error": "Repository not found"})
        files, licence = self.repos[repo]
        self.finish({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "gated": False,
                     "tags": [f"license:{licence}"], "cardData": {"license": licence},
                     "siblings": [{"rfilename": name, "size": len(data)} for name, data in files.items()]})


class _Tree(tornado.web.RequestHandler):
    def initialize(self, repos):
        self.repos = repos

    def get(self, repo, _revision, _path=None):
        files = self.repos.get(repo, ({}, ""))[0]
        entries = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                   for name, data in files.items()]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(entries))


class _Resolve(tornado.web.RequestHandler):
    def initialize(self, repos, log):
        self.repos, self.log = repos, log

    def _file(self, repo, path):
        data = self.repos.get(repo, ({}, ""))[0].get(path)
        if data is None:
            self.set_status(404)
            self.set_header("X-Error-Code", "EntryNotFound")
            return None
        self.set_header("X-Repo-Commit", COMMIT)
        self.set_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.set_header("Content-Length", str(len(data)))
        return data

    def head(self, repo, _revision, path):
        self._file(repo, path)
        self.finish()

    def get(self, repo, _revision, path):
        data = self._file(repo, path)
        if data is not None:
            self.log.append(f"{repo}/{path}")
        self.finish(data or b"")


class FakeHub:
    """`repos`: {repo_id: ({path: bytes}, licence)}. `downloads` lists every file body served."""

    def __init__(self, repos: dict):
        self.repos, self.downloads = repos, []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        asyncio.set_event_loop(asyncio.new_event_loop())
        repo = r"([^/]+/[^/]+)"
        app = tornado.web.Application([
            (rf"/api/models/{repo}/tree/([^/]+)(?:/(.*))?", _Tree, {"repos": self.repos}),
            (rf"/api/models/{repo}(?:/revision/([^/]+))?", _Info, {"repos": self.repos}),
            (rf"/{repo}/resolve/([^/]+)/(.+)", _Resolve, {"repos": self.repos, "log": self.downloads}),
        ])
        sock, self.port = bind_unused_port()
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets([sock])
        self.loop = tornado.ioloop.IOLoop.current()
        self._ready.set()
        self.loop.start()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.loop.add_callback(self.loop.stop)
        self._thread.join(10)


def write_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repo's snapshot in huggingface_hub's cache layout (blobs, snapshots/<commit>, refs/main)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    for path, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / COMMIT / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT
