"""A Gitea double for the cc-ci daemon VM test.

Serves, on 127.0.0.1:<port>:
  - the part of Gitea's REST API (/api/v1) the daemon calls, with Gitea's shapes and status
    codes, for one repository and one open pull request;
  - the repositories under <root> over git's "dumb" HTTP protocol (static files; run
    `git update-server-info` in each bare repository), at /<owner>/<repo>.git and /<owner>/<repo>;
  - /_double/statuses and /_double/comments: what the daemon posted, for the test to assert on.

Usage: gitea-double.py <root> <port> <token-file> <org>/<member>...
"""

import json
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(sys.argv[1])
PORT = int(sys.argv[2])
TOKEN = Path(sys.argv[3]).read_text().strip()
MEMBERS = {tuple(pair.split("/", 1)) for pair in sys.argv[4:]}
PR_NUMBER = 1

lock = threading.Lock()
statuses: list = []
comments: dict = {}
next_comment_id = [1000]


def repo_dir(owner: str, repo: str) -> Path:
    return ROOT / owner / f"{repo.removesuffix('.git')}.git"


def head_sha(owner: str, repo: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo_dir(owner, repo)), "rev-parse", f"refs/pull/{PR_NUMBER}/head"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def pull_request(owner: str, repo: str) -> dict:
    base = f"http://127.0.0.1:{PORT}/{owner}/{repo}"
    repo_obj = {
        "full_name": f"{owner}/{repo}",
        "name": repo,
        "owner": {"login": owner},
        "clone_url": f"{base}.git",
        "html_url": base,
    }
    return {
        "number": PR_NUMBER,
        "state": "open",
        "html_url": f"{base}/pulls/{PR_NUMBER}",
        "head": {"sha": head_sha(owner, repo), "ref": "main", "repo": repo_obj},
        "base": {"ref": "main", "repo": repo_obj},
    }


class Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(ROOT), **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        sys.stderr.write("gitea-double: " + (format % args) + "\n")

    def send_json(self, code: int, value) -> None:
        body = json.dumps(value, indent=2).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def authorised(self) -> bool:
        if self.headers.get("Authorization") == f"token {TOKEN}":
            return True
        self.send_json(401, {"message": "token is required"})
        return False

    def read_json(self):
        length = int(self.headers.get("Content-Length", "0"))
        return json.loads(self.rfile.read(length) or b"{}")

    def api_path(self):
        path = self.path.split("?", 1)[0]
        return path[len("/api/v1") :] if path.startswith("/api/v1/") else None

    def translate_path(self, path):
        # /<owner>/<repo>/... is served from <owner>/<repo>.git/... as well.
        match = re.match(r"^/([^/]+)/([^/]+?)(\.git)?(/.*)?$", path.split("?", 1)[0])
        if match and repo_dir(match.group(1), match.group(2)).is_dir():
            path = f"/{match.group(1)}/{match.group(2)}.git{match.group(4) or ''}"
        return super().translate_path(path)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/_double/statuses":
            with lock:
                return self.send_json(200, statuses)
        if self.path == "/_double/comments":
            with lock:
                return self.send_json(200, list(comments.values()))
        api = self.api_path()
        if api is None:
            return super().do_GET()
        if not self.authorised():
            return None
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls/(\d+)", api):
            if int(m.group(3)) != PR_NUMBER or not repo_dir(m.group(1), m.group(2)).is_dir():
                return self.send_json(404, {"message": "not found"})
            return self.send_json(200, pull_request(m.group(1), m.group(2)))
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls", api):
            return self.send_json(200, [pull_request(m.group(1), m.group(2))])
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/(\d+)/comments", api):
            with lock:
                return self.send_json(200, list(comments.values()))
        if m := re.fullmatch(r"/orgs/([^/]+)/members/([^/]+)", api):
            return self.send_empty(204 if (m.group(1), m.group(2)) in MEMBERS else 404)
        return self.send_json(404, {"message": "not found"})

    def do_POST(self):  # noqa: N802
        api = self.api_path()
        if api is None:
            return self.send_json(404, {"message": "not found"})
        if not self.authorised():
            return None
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]+)", api):
            status = self.read_json()
            status["sha"] = m.group(3)
            with lock:
                statuses.append(status)
            return self.send_json(201, status)
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/(\d+)/comments", api):
            body = self.read_json().get("body", "")
            with lock:
                next_comment_id[0] += 1
                comment = {
                    "id": next_comment_id[0],
                    "body": body,
                    "user": {"login": "cc-ci-bot"},
                    "issue": int(m.group(3)),
                }
                comments[comment["id"]] = comment
            return self.send_json(201, comment)
        return self.send_json(404, {"message": "not found"})

    def do_PATCH(self):  # noqa: N802
        api = self.api_path()
        if api is None:
            return self.send_json(404, {"message": "not found"})
        if not self.authorised():
            return None
        if m := re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/comments/(\d+)", api):
            body = self.read_json().get("body", "")
            with lock:
                comment = comments.get(int(m.group(3)))
                if comment is None:
                    return self.send_json(404, {"message": "comment not found"})
                comment["body"] = body
                return self.send_json(200, comment)
        return self.send_json(404, {"message": "not found"})


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
