#!/usr/bin/env python3
"""A stand-in for CircleCI's runner API on 127.0.0.1, for scripts/demo.sh.

Serves the endpoints cci-scaler uses (queue depth, runners, resource classes,
runner tokens) from memory. Set the queue with
    curl -X POST http://127.0.0.1:PORT/_stand-in/queue -d '{"unclaimed": 3, "running": 0}'
Prints its base URL on the first line of stdout. Any Circle-Token is accepted.

With --fleet MOTO_URL (and boto3, as in the tests' virtualenv) it also plays
the runners of the emulator's Auto Scaling groups, once a second: each
instance in service registers as a runner (named by its instance id), an idle
runner claims a queued job, a job runs --job-seconds then finishes, and the
runner (single-task) exits: its instance leaves the group with decrement, as
the boot script's exit hook does. A runner idle for --idle-seconds exits too.
What it does is printed on stderr.
"""
import argparse
import itertools
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STATE = {"unclaimed": 0, "running": 0, "runners": [], "classes": {}, "tokens": {}}
# --fleet: per runner (instance id) its resource class, and what it does.
RUNNERS = {}
LOCK = threading.Lock()
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
            with LOCK:
                items = [{"name": n, "resource_class": RUNNERS.get(n, {}).get("class", rc)} for n in STATE["runners"]]
            ns = q.get("namespace")
            if ns:
                items = [i for i in items if i["resource_class"].startswith(ns + "/")]
            elif rc:
                items = [i for i in items if i["resource_class"] == rc]
            return self.reply(200, {"items": items})
        if url.path == "/_stand-in/state":
            with LOCK:
                return self.reply(200, {"unclaimed": STATE["unclaimed"], "running": STATE["running"],
                                        "runners": list(STATE["runners"]), "desired": STATE.get("desired", 0)})
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


def say(msg):
    print(f"  [stand-in] {msg}", file=sys.stderr, flush=True)


def play_fleet(moto_url, job_seconds, idle_seconds):
    """The runners of the emulator's groups, once a second (see the top)."""
    import boto3

    asg = boto3.client("autoscaling", endpoint_url=moto_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    while True:
        time.sleep(1)
        try:
            groups = asg.describe_auto_scaling_groups()["AutoScalingGroups"]
        except Exception as e:  # the emulator is going away at the end
            say(f"cannot read the groups: {e}")
            continue
        now = time.monotonic()
        leaving = []
        with LOCK:
            STATE["desired"] = sum(g["DesiredCapacity"] for g in groups)
            classes = [c["resource_class"] for c in STATE["classes"].values()]
            for g in groups:
                for i in g["Instances"]:
                    iid = i["InstanceId"]
                    if i["LifecycleState"] == "InService" and iid not in RUNNERS:
                        RUNNERS[iid] = {"class": classes[0] if classes else "", "group": g["AutoScalingGroupName"],
                                        "job_until": None, "idle_since": now}
                        STATE["runners"].append(iid)
                        say(f"runner {iid} registered ({g['AutoScalingGroupName']})")
            for iid, r in list(RUNNERS.items()):
                if r.get("gone"):
                    continue
                if r["job_until"] is None and STATE["unclaimed"] > 0:
                    STATE["unclaimed"] -= 1
                    STATE["running"] += 1
                    r["job_until"] = now + job_seconds
                    say(f"runner {iid} claimed a job ({STATE['unclaimed']} still queued)")
                elif r["job_until"] is not None and now >= r["job_until"]:
                    STATE["running"] -= 1
                    say(f"job on {iid} finished; the runner exits (single task)")
                    leaving.append(iid)
                elif r["job_until"] is None and now - r["idle_since"] >= idle_seconds:
                    say(f"runner {iid} idle {idle_seconds}s; it exits")
                    leaving.append(iid)
            for iid in leaving:
                RUNNERS[iid]["gone"] = True
                STATE["runners"].remove(iid)
        for iid in leaving:
            # The exit hook: leave the group, one fewer wanted.
            asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=True)
            say(f"instance {iid} left its group with decrement")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A CircleCI runner-API stand-in on 127.0.0.1.")
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument("--fleet", metavar="MOTO_URL", help="play the emulator's runners (needs boto3)")
    parser.add_argument("--job-seconds", type=float, default=6)
    parser.add_argument("--idle-seconds", type=float, default=20)
    args = parser.parse_args()
    if args.fleet:
        threading.Thread(target=play_fleet, args=(args.fleet, args.job_seconds, args.idle_seconds),
                         daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
