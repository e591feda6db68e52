#!/usr/bin/env python3
"""A stand-in for CircleCI's runner API on 127.0.0.1, for scripts/demo.sh.

Serves the endpoints cci-scaler uses (queue depth, runners, resource classes,
runner tokens) from memory. Set the queue with
    curl -X POST http://127.0.0.1:PORT/_stand-in/queue -d '{"unclaimed": 3, "running": 0}'
Prints its base URL on the first line of stdout. Any Circle-Token is accepted.
"""
import itertools
import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STATE = {"unclaimed": 0, "running": 0, "runners": [], "classes": {}, "tokens": {}}
IDS = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        rc = q.get("resource-class", "")
        if url.path == "/api/v3/runner/tasks":
            return self.reply(200, {"unclaimed_task_count": STATE["unclaimed"]})
        if url.path == "/api/v3/runner/tasks/running":
            return self.reply(200, {"running_runner_tasks": STATE["running"]})
        if url.path == "/api/v3/runner":
            return self.reply(200, {"items": [{"name": n, "resource_class": rc} for n in STATE["runners"]]})
        if url.path == "/api/v3/runner/resource":
            ns = q.get("namespace", "")
            items = [c for c in STATE["classes"].values() if c["resource_class"].startswith(ns + "/")]
            return self.reply(200, {"items": items})
        if url.path == "/api/v3/runner/token":
            items = [{k: t[k] for k in ("id", "resource_class", "nickname")}
                     for t in STATE["tokens"].values() if t["resource_class"] == rc]
            return self.reply(200, {"items": items})
        self.reply(404, {"message": "not found"})

    def do_POST(self):
        path = urlparse(self.path).path
        b = self.body()
        if path == "/_stand-in/queue":
            STATE["unclaimed"] = int(b.get("unclaimed", 0))
            STATE["running"] = int(b.get("running", 0))
            STATE["runners"] = list(b.get("runners", STATE["runners"]))
            return self.reply(200, STATE | {"classes": len(STATE["classes"]), "tokens": len(STATE["tokens"])})
        if path == "/api/v3/runner/resource":
            c = {"id": f"rc-{next(IDS)}", "resource_class": b["resource_class"], "description": b.get("description", "")}
            STATE["classes"][c["id"]] = c
            return self.reply(200, c)
        if path == "/api/v3/runner/token":
            t = {"id": f"tok-{next(IDS)}", "resource_class": b["resource_class"], "nickname": b.get("nickname", ""),
                 "token": secrets.token_hex(24)}
            STATE["tokens"][t["id"]] = t
            return self.reply(200, t)
        self.reply(404, {"message": "not found"})

    def do_DELETE(self):
        parts = urlparse(self.path).path.strip("/").split("/")
        if parts[:4] == ["api", "v3", "runner", "resource"] and len(parts) >= 5:
            c = STATE["classes"].pop(parts[4], None)
            if c:
                STATE["tokens"] = {k: t for k, t in STATE["tokens"].items() if t["resource_class"] != c["resource_class"]}
                return self.reply(200, {})
        if parts[:4] == ["api", "v3", "runner", "token"] and len(parts) == 5:
            if STATE["tokens"].pop(parts[4], None):
                return self.reply(200, {})
        self.reply(404, {"message": "not found"})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
