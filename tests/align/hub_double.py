"""TEST DOUBLE of the Hugging Face Hub: a tiny in-process HTTP server, NOT the Hub.

It answers only the routes that ``HfApi.create_repo`` and ``HfApi.upload_folder`` call in
huggingface_hub 1.x/2.x, with just enough JSON for the client to carry on:

* ``POST /api/repos/create``                         -> ``{"url": ENDPOINT/ns/name}`` (409 when it exists)
* ``POST /api/validate-yaml``                         -> ``{"errors": [], "warnings": []}`` (400 on YAML that
  does not parse to a mapping; the real Hub checks much more, e.g. the model-index schema)
* ``POST /api/{type}s/{ns}/{name}/preupload/{rev}``   -> every file ``uploadMode: "regular"``, so the client
  sends contents base64-encoded inside the commit and never touches LFS or Xet storage
* ``POST /api/{type}s/{ns}/{name}/commit/{rev}``      -> NDJSON body parsed; files decoded and kept
* ``GET  /api/whoami-v2``                             -> a fake user

Anything else is a 404 and is recorded, so a test sees an unexpected route. Every request is
kept in :attr:`HubDouble.requests` (method, path, headers without ``Authorization``, parsed
body); :attr:`HubDouble.auth_seen` keeps only whether a bearer token came and its value, for
tests that check the token travelled in the header (and nowhere else).

Limits: no LFS/Xet uploads, no downloads, no revisions other than the name given, no auth
checks beyond recording the header. Use it as a context manager; it listens on 127.0.0.1 on a
free port and stops (thread joined) on exit.
"""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: object = None


@dataclass
class HubDouble:
    """The server's state; ``endpoint`` is the base URL to give ``HfApi(endpoint=...)``."""

    requests: list = field(default_factory=list)
    repos: dict = field(default_factory=dict)  # repo_id -> {"private": bool, "files": {path: bytes}}
    commits: list = field(default_factory=list)  # (repo_id, revision, summary, [paths])
    auth_seen: list = field(default_factory=list)
    endpoint: str = ""

    def __enter__(self) -> "HubDouble":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-double", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def files(self, repo_id: str) -> dict:
        """Path -> bytes of everything committed to ``repo_id``."""
        return self.repos.get(repo_id, {}).get("files", {})

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    hub: HubDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        if auth:
            self.hub.auth_seen.append(auth)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        body = _parse(raw, self.headers.get("Content-Type", ""))
        self.hub.requests.append(Recorded(method, path, headers, body))
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            return self._create(body)
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(body)
        if method == "GET" and path.startswith("/api/whoami"):
            return self._send(200, {"type": "user", "name": "double-user", "orgs": []})
        # /api/{type}s/{ns}/{name}/{action}/{revision}
        if method == "POST" and len(parts) == 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            if repo_id not in self.hub.repos:
                return self._send(404, {"error": f"Repository {repo_id} not found"}, {"X-Error-Code": "RepoNotFound"})
            if action == "preupload":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                         for f in body.get("files", [])]
                return self._send(200, {"files": files, "commitOid": "0" * 40})
            return self._commit(repo_id, revision, body)
        return self._send(404, {"error": f"hub double: no route for {method} {path}"})

    def _create(self, body: dict) -> None:
        repo_id = f"{body.get('organization')}/{body.get('name')}" if body.get("organization") else body.get("name")
        if repo_id in self.hub.repos:
            return self._send(409, {"error": "You already created this model repo", "url": f"{self.hub.endpoint}/{repo_id}"})
        self.hub.repos[repo_id] = {"private": body.get("visibility") == "private", "type": body.get("type"),
                                   "files": {}}
        self._send(200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, body: dict) -> None:
        import yaml

        content = body.get("content", "")
        if content.startswith("---"):
            try:
                metadata = yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as error:
                return self._send(400, {"errors": [{"message": str(error)}]})
            if not isinstance(metadata, dict):
                return self._send(400, {"errors": [{"message": "metadata is not a mapping"}]})
        self._send(200, {"errors": [], "warnings": []})

    def _commit(self, repo_id: str, revision: str, lines: list) -> None:
        if not isinstance(lines, list) or not lines or lines[0].get("key") != "header":
            return self._send(400, {"error": "commit body must be NDJSON starting with a header line"})
        files = self.hub.repos[repo_id]["files"]
        added = []
        for line in lines[1:]:
            value = line.get("value", {})
            if line.get("key") == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif line.get("key") == "deletedFile":
                files.pop(value["path"], None)
            else:  # lfsFile etc.: the double told the client to send everything as regular
                return self._send(400, {"error": f"hub double: unsupported commit line {line.get('key')!r}"})
        self.hub.commits.append((repo_id, revision, lines[0]["value"].get("summary"), added))
        oid = f"{len(self.hub.commits):040x}"
        self._send(200, {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None, "success": True})

    def _send(self, status: int, payload: dict, extra_headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _parse(raw: bytes, content_type: str):
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        if "ndjson" in content_type:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError:
        return text
