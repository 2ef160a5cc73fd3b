"""A local stand-in for the Hugging Face Hub, for tests: stdlib `http.server` on 127.0.0.1.

It speaks the subset of the Hub's HTTP API that `huggingface_hub` 2.x and transformers use to
download and publish model repositories, so tests exercise the real client code paths
(`hf_hub_download`, `snapshot_download`, `from_pretrained`, `create_repo`, `create_commit`)
without any network and without mocking our own code:

- `HEAD/GET /{repo}/resolve/{rev}/{path}`: headers `X-Repo-Commit`, `ETag`, `Content-Length`;
  404 with `X-Error-Code` (`EntryNotFound` / `RevisionNotFound` / `RepoNotFound`), as the Hub
  sends, so the client caches "file absent" and tells the three cases apart;
- `GET /api/models/{repo}[/revision/{rev}]`: model info with `sha` and `siblings`;
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: file listing (`recursive` honoured);
- `POST /api/repos/create`, `POST /api/models/{repo}/branch/{name}`;
- `POST /api/models/{repo}/preupload/{rev}`: every file is uploaded "regular" (inline base64),
  with the remote blob id so unchanged files are skipped as on the Hub;
- `POST /api/models/{repo}/commit/{rev}`: NDJSON commit payload (file / deletedFile /
  deletedFolder);
- `POST /api/validate-yaml`: README front matter must be a YAML mapping;
- `GET /_local_hub/requests`: the number of requests so far (test introspection, not logged).

Repositories live in memory: each commit is a full snapshot `{path: bytes}`. Every request is
logged (`LocalHub.requests`); anything the server does not understand is answered 501 and
recorded in `LocalHub.unhandled`, so a test can assert the client needed nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    """The id git (and the Hub) gives a blob: sha1 of `blob <size>\\0<data>`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    parent: str | None
    message: str
    added: list[str] = field(default_factory=list)  # paths written by this commit, in order
    deleted: list[str] = field(default_factory=list)


@dataclass
class Repo:
    repo_id: str
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    branches: set[str] = field(default_factory=set)
    commits: dict[str, Commit] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # commit shas in creation order

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


@dataclass
class LoggedRequest:
    method: str
    path: str
    authorization: str | None


class LocalHub:
    """In-memory Hub with an HTTP front end on 127.0.0.1 and a random free port."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[LoggedRequest] = []
        self.unhandled: list[str] = []
        # Called as on_request(method, path) before a request is answered (tests use it to
        # change a repository between two requests of one client call).
        self.on_request: Callable[[str, str], None] | None = None
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not running; call start() first.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        hub = self

        class Handler(_HubRequestHandler):
            local_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ test seeding
    def create_repo(self, repo_id: str) -> Repo:
        """A new repository whose `main` holds one commit with `.gitattributes` (as the Hub)."""
        with self._lock:
            if repo_id in self.repos:
                raise FileExistsError(repo_id)
            repo = Repo(repo_id)
            self.repos[repo_id] = repo
            self._commit(repo, "main", {".gitattributes": GITATTRIBUTES}, [], "initial commit")
            repo.branches.add("main")
            return repo

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str | Path] | str | Path,
        branch: str = "main",
        message: str = "add files",
        tags: tuple[str, ...] = (),
        replace: bool = True,
    ) -> str:
        """Commit `files` (a mapping, or a folder whose files are all taken) to `branch`.

        `replace=True` makes the new snapshot contain exactly these files (plus
        `.gitattributes`); otherwise they are layered on the branch's current files.
        """
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            if isinstance(files, (str, Path)):
                root = Path(files)
                files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
            content = {path: _as_bytes(data) for path, data in files.items()}
            deleted = []
            if replace and branch in repo.refs:
                current = repo.commits[repo.refs[branch]].files
                deleted = [p for p in current if p not in content and p != ".gitattributes"]
            sha = self._commit(repo, branch, content, deleted, message)
            repo.branches.add(branch)
            for tag in tags:
                repo.refs[tag] = sha
            return sha

    def commits(self, repo_id: str) -> list[Commit]:
        """Commits of a repository, oldest first."""
        repo = self.repos[repo_id]
        return [repo.commits[sha] for sha in repo.history]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id}@{revision}")
        return dict(commit.files)

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    # ---------------------------------------------------------------- internals
    def _commit(
        self, repo: Repo, branch: str, added: dict[str, bytes], deleted: list[str], message: str
    ) -> str:
        parent = repo.refs.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        for path in deleted:
            files.pop(path, None)
        files.update(added)
        self._counter += 1
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_id}\n{parent}\n{message}\n{self._counter}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_id(files[path])}\n".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha, files, parent, message, list(added), list(deleted))
        repo.history.append(sha)
        repo.refs[branch] = sha
        return sha


def _as_bytes(data: bytes | str | Path) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, Path):
        return data.read_bytes()
    return data.encode()


class _HubRequestHandler(BaseHTTPRequestHandler):
    local_hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean; requests are in LocalHub.requests

    # ----------------------------------------------------------------- routing
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        hub = self.local_hub
        split = urlsplit(self.path)
        if split.path == "/_local_hub/requests":  # test introspection, not logged
            return self._json(200, {"count": hub.request_count()})
        with hub._lock:
            hub.requests.append(LoggedRequest(method, self.path, self.headers.get("Authorization")))
        if hub.on_request is not None:
            hub.on_request(method, split.path)
        body = b""
        if method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # Split before unquoting: revisions such as "refs/pr/1" arrive as "refs%2Fpr%2F1".
        parts = split.path.strip("/").split("/")
        query = parse_qs(split.query)
        try:
            if parts[:2] == ["api", "models"]:
                self._api_models(method, parts[2:], query, body)
            elif parts[:3] == ["api", "repos", "create"] and method == "POST":
                self._create_repo(body)
            elif parts[:2] == ["api", "validate-yaml"] and method == "POST":
                self._validate_yaml(body)
            elif "resolve" in parts and method in ("HEAD", "GET"):
                i = parts.index("resolve")
                repo_id = "/".join(parts[:i])
                revision = unquote(parts[i + 1])
                filename = unquote("/".join(parts[i + 2 :]))
                self._resolve(method, repo_id, revision, filename)
            else:
                self._unhandled(method)
        except BrokenPipeError:
            pass

    def _api_models(self, method: str, rest: list[str], query: dict, body: bytes) -> None:
        keywords = ("revision", "tree", "preupload", "commit", "branch")
        i = next((k for k, part in enumerate(rest) if part in keywords), len(rest))
        repo_id, action, args = "/".join(rest[:i]), (rest[i] if i < len(rest) else None), rest[i + 1 :]
        repo = self.local_hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if method == "GET" and action in (None, "revision"):
            revision = unquote(args[0]) if args else "main"
            return self._model_info(repo, revision)
        if method == "GET" and action == "tree" and args:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._tree(repo, unquote(args[0]), unquote("/".join(args[1:])), recursive)
        if method == "POST" and action == "preupload" and args:
            return self._preupload(repo, unquote(args[0]), body)
        if method == "POST" and action == "commit" and args:
            if query.get("create_pr"):
                return self._error(400, None, "pull requests are not supported by the local hub")
            return self._create_commit(repo, unquote(args[0]), body)
        if method == "POST" and action == "branch" and args:
            return self._create_branch(repo, unquote("/".join(args)), body)
        self._unhandled(method)

    # -------------------------------------------------------------- endpoints
    def _resolve(self, method: str, repo_id: str, revision: str, filename: str) -> None:
        repo = self.local_hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        data = commit.files.get(filename)
        if data is None:
            return self._error(
                404, "EntryNotFound", f"{filename} does not exist on {revision}",
                {"X-Repo-Commit": commit.sha},
            )
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{git_blob_id(data)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, data if method == "GET" else b"", headers, content_length=len(data))

    def _model_info(self, repo: Repo, revision: str) -> None:
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        self._json(
            200,
            {
                "_id": repo.repo_id,
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit.sha,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            },
        )

    def _tree(self, repo: Repo, revision: str, prefix: str, recursive: bool) -> None:
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict] = {}
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rel = path[len(base) :]
            if recursive or "/" not in rel:
                data = commit.files[path]
                entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            # directories on the way down
            pieces = rel.split("/")[:-1]
            for depth in range(1, len(pieces) + 1):
                if not recursive and depth > 1:
                    break
                folder = base + "/".join(pieces[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40})
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
        self._json(200, list(entries.values()))

    def _create_repo(self, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            return self._error(400, None, "the local hub serves model repositories only")
        name, org = payload.get("name"), payload.get("organization")
        repo_id = f"{org}/{name}" if org else name
        url = f"{self.local_hub.url}/{repo_id}"
        with self.local_hub._lock:
            if repo_id in self.local_hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            self.local_hub.create_repo(repo_id)
        self._json(200, {"url": url, "name": repo_id})

    def _create_branch(self, repo: Repo, branch: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        start = payload.get("startingPoint") or "main"
        with self.local_hub._lock:
            if branch in repo.branches:
                return self._json(409, {"error": f"Branch {branch} already exists"})
            commit = repo.resolve(start)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {start}")
            repo.refs[branch] = commit.sha
            repo.branches.add(branch)
        self._json(200, {})

    def _preupload(self, repo: Repo, revision: str, body: bytes) -> None:
        commit = repo.resolve(revision)
        current = commit.files if commit is not None else {}
        files = json.loads(body)["files"]
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_id(current[f["path"]]) if f["path"] in current else None,
            }
            for f in files
        ]
        self._json(200, {"files": answer})

    def _create_commit(self, repo: Repo, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, None, "commit payload must start with a header line")
        header = lines[0]["value"]
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        with self.local_hub._lock:
            if revision not in repo.branches:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            head = repo.refs[revision]
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                return self._json(412, {"error": f"parentCommit {parent} is not the head {head}"})
            current = repo.commits[head].files
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        return self._error(400, None, f"unsupported encoding {value.get('encoding')}")
                    added[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in current:
                        return self._error(404, "EntryNotFound", "A file with this name doesn't exist")
                    deleted.append(value["path"])
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    deleted.extend(p for p in current if p.startswith(folder))
                else:
                    return self._error(400, None, f"unsupported commit operation {key!r}")
            message = header.get("summary", "")
            if header.get("description"):
                message += "\n\n" + header["description"]
            sha = self.local_hub._commit(repo, revision, added, deleted, message)
        self._json(
            200,
            {
                "commitUrl": f"{self.local_hub.url}/{repo.repo_id}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
            },
        )

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body).get("content", "")
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end == -1:
                errors.append({"message": "README.md front matter is not closed by '---'"})
            else:
                try:
                    meta = yaml.safe_load(content[3:end])
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
                else:
                    if meta is not None and not isinstance(meta, dict):
                        errors.append({"message": "README.md metadata must be a YAML mapping"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    # ---------------------------------------------------------------- helpers
    def _unhandled(self, method: str) -> None:
        with self.local_hub._lock:
            self.local_hub.unhandled.append(f"{method} {self.path}")
        self._json(501, {"error": f"local hub does not implement {method} {self.path}"})

    def _error(
        self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send(status, data, {"Content-Type": "application/json", **(headers or {})})

    def _send(
        self, status: int, data: bytes, headers: dict[str, str], content_length: int | None = None
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data) if content_length is None else content_length))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)


__all__ = ["Commit", "LocalHub", "Repo", "git_blob_id"]


# ------------------------------------------------------------------------------------------
# Helpers for tests that talk to the local hub. They import the package lazily, so a client
# subprocess can import this module and still load remote code before `mclstexp_hub` is.
TINY_CONFIG = {
    "image_encoder": "test_resnet",  # timm's 0.37M-parameter test net: fast, real convolutions
    "max_position": 64,
    "projection_dim": 32,
    "spot_encoder_heads": 2,
    "spot_encoder_head_dim": 8,
    "retrieval_k": 5,
    "patch_size": 32,
    "image_encoder_final_activation": True,
    "expression_transform": "log10_cp10k_panel",
    "expression_units": "log10(1 + 1e4 * count / panel total)",
}
TINY_GENES = [f"GENE{i}" for i in range(12)]
# Remote code that only the pipeline and the image processor need.
PIPELINE_CODE_FILES = ("pipeline_mclstexp.py", "image_processing_mclstexp.py",
                       "slide_io_mclstexp.py", "slide_predict_mclstexp.py")


def make_checkpoint(
    folder: str | Path,
    seed: int,
    *,
    genes: list[str] | None = None,
    bank: bool = True,
    processor: bool = True,
    pipeline: bool = True,
    n_bank_spots: int = 40,
) -> Path:
    """Save a tiny, seeded mclSTExp checkpoint (optionally with bank, processor, pipeline)."""
    import torch

    from mclstexp_hub import MclSTExpConfig, MclSTExpModel

    torch.manual_seed(seed)
    config = MclSTExpConfig(gene_names=list(genes or TINY_GENES), **TINY_CONFIG)
    model = MclSTExpModel(config).eval()
    if bank:
        g = torch.Generator().manual_seed(seed + 1000)
        expression = torch.rand((n_bank_spots, config.n_genes), generator=g)
        positions = torch.randint(0, config.max_position, (n_bank_spots, 2), generator=g)
        model.build_spot_bank(
            expression, positions, section_ids=["S1"] * (n_bank_spots // 2)
            + ["S2"] * (n_bank_spots - n_bank_spots // 2),
        )
    from mclstexp_hub.hub.checkpoint import write_checkpoint

    folder = write_checkpoint(model, folder)
    # processor=False / pipeline=False: the folder an older writer (plain transformers
    # save_pretrained + spot bank) would have left, for the tests of what push derives.
    if not processor:
        (folder / "preprocessor_config.json").unlink()
    if not pipeline:
        config = json.loads((folder / "config.json").read_text())
        del config["custom_pipelines"]
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in PIPELINE_CODE_FILES:
            (folder / name).unlink(missing_ok=True)
    return folder


def probe_pixels(patch_size: int = TINY_CONFIG["patch_size"], n: int = 3):
    """Fixed input images, identical in every process."""
    import torch

    return torch.rand((n, 3, patch_size, patch_size), generator=torch.Generator().manual_seed(7))


def client_env(hub_url: str, hf_home: str | Path, offline: bool = False) -> dict[str, str]:
    """Environment of a client subprocess: this hub, a private HF_HOME, no real network."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        TOKENIZERS_PARALLELISM="false",
    )
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_client(script: Path, scenario: str, args: dict, env: dict[str, str], timeout: int = 300) -> dict:
    """Run `python script scenario ARGS.json` and return the JSON report it writes."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = {**args, "report": str(Path(tmp) / "report.json")}
        (Path(tmp) / "args.json").write_text(json.dumps(args))
        result = subprocess.run(
            [sys.executable, str(script), scenario, str(Path(tmp) / "args.json")],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        report_path = Path(args["report"])
        if result.returncode != 0 or not report_path.is_file():
            raise RuntimeError(
                f"client {scenario} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
        return json.loads(report_path.read_text())


def run_scenarios(scenarios: dict, report_path: str) -> None:
    """Run each named scenario, recording its values or its error; write the JSON report."""
    import traceback

    report = {}
    for name, func in scenarios.items():
        try:
            report[name] = {"ok": True, "values": func()}
        except Exception as exc:  # noqa: BLE001 - recorded for the test to assert on
            report[name] = {
                "ok": False,
                "error_type": type(exc).__name__,
                "error": str(exc),
                "traceback": traceback.format_exc()[-3000:],
            }
    Path(report_path).write_text(json.dumps(report, default=str))
