"""Test rig for what the moto emulator cannot see (run by the Rust tests).

Serves, on 127.0.0.1 only:
- an AWS gateway in front of moto (plain HTTP for host clients, TLS for a VM
  guest) that checks every request's SigV4 signature as AWS does (scope, date,
  signed headers, session token) and then evaluates the caller's IAM policies
  on the action and the resource ARN AWS authorises it on, including what AWS
  checks on the caller's behalf (ec2:RunInstances on every resource a launch
  template names, iam:PassRole, behind UpdateAutoScalingGroup). A call a
  policy does not allow is answered as AWS answers it (AccessDenied); one
  whose outcome hangs on a Condition this evaluator cannot decide is passed
  through and recorded as undecided, never as allowed;
- an instance metadata service (IMDSv2 only: every read needs a token);
- a control API (JSON) for the test: credentials, instance metadata, faults
  to inject (HTTP 5xx, throttling, per action or metadata path), and the
  record of every call.

Usage: gateway.py CONFIG.json; prints one JSON line with its ports.
"""

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from fnmatch import fnmatchcase

import boto3

CFG = json.load(open(sys.argv[1]))
MOTO = CFG["moto_url"].rstrip("/")
REGION = CFG.get("region", "us-east-1")
ACCOUNT = CFG.get("account", "123456789012")
LOCK = threading.Lock()

STATE = {
    # access key id -> {"secret", "token", "role"}
    "creds": {},
    "calls": [],
    "faults": [],
    "imds": {
        "meta": {},
        "user_data": b"",
        "tokens": set(),
        "requests": [],
        "test_flags": {},
    },
}


def admin(service):
    return boto3.client(
        service,
        endpoint_url=MOTO,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# --------------------------------------------------------------------------
# SigV4 verification


def uri_encode(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def canonical_request(method, raw_path, raw_query, headers, signed, payload_hash):
    # Non-S3 services: each path segment is encoded once more, as sent.
    path = "/".join(uri_encode(seg) for seg in raw_path.split("/")) or "/"
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        k, _, v = part.partition("=")
        pairs.append(
            (uri_encode(urllib.parse.unquote(k)), uri_encode(urllib.parse.unquote(v)))
        )
    query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    lines = []
    for name in signed:
        values = headers.get_all(name) or []
        value = ",".join(re.sub(r"\s+", " ", v.strip()) for v in values)
        lines.append(f"{name}:{value}\n")
    return "\n".join(
        [method, path, query, "".join(lines), ";".join(signed), payload_hash]
    )


def signing_key(secret, date, region, service):
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def verify_sigv4(method, raw_path, raw_query, headers, body):
    auth = headers.get("Authorization", "")
    m = re.match(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
        r"SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$",
        auth,
    )
    if not m:
        raise Refused(403, "MissingAuthenticationToken", f"not a SigV4 Authorization header: {auth[:60]!r}")
    akid, date, region, service, signed, signature = m.groups()
    signed = signed.split(";")
    cred = STATE["creds"].get(akid)
    if cred is None:
        raise Refused(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
    if region != REGION:
        raise Refused(403, "SignatureDoesNotMatch", f"credential scope region {region}, expected {REGION}")
    if "host" not in signed:
        raise Refused(403, "SignatureDoesNotMatch", "the host header is not signed")
    amz_date = headers.get("X-Amz-Date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Refused(403, "IncompleteSignature", f"bad X-Amz-Date {amz_date!r}")
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 900:
        raise Refused(403, "RequestExpired", "Signature expired: the request time is over 15 minutes off")
    if amz_date[:8] != date:
        raise Refused(403, "SignatureDoesNotMatch", "credential scope date is not the request's date")
    if cred.get("token") and headers.get("X-Amz-Security-Token") != cred["token"]:
        raise Refused(403, "InvalidClientTokenId", "The security token included in the request is invalid (session token missing or wrong).")
    payload_hash = headers.get("X-Amz-Content-Sha256") or hashlib.sha256(body).hexdigest()
    if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body).hexdigest():
        raise Refused(403, "SignatureDoesNotMatch", "payload hash does not match the body")
    creq = canonical_request(method, raw_path, raw_query, headers, signed, payload_hash)
    scope = f"{date}/{region}/{service}/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    want = hmac.new(signing_key(cred["secret"], date, region, service), sts.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, signature):
        raise Refused(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    return akid, service


# --------------------------------------------------------------------------
# What each call is authorised on (the Service Authorization Reference).


def params_of(headers, body, raw_query):
    ctype = headers.get("Content-Type", "")
    if "json" in ctype:
        try:
            return json.loads(body or b"{}"), headers.get("X-Amz-Target", "").split(".")[-1]
        except ValueError:
            return {}, ""
    p = dict(urllib.parse.parse_qsl(body.decode() if body else raw_query, keep_blank_values=True))
    return p, p.get("Action", "")


def group_arn(name):
    out = admin("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    groups = out["AutoScalingGroups"]
    if not groups:
        return f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{name}", {}, None
    g = groups[0]
    return g["AutoScalingGroupARN"], {t["Key"]: t["Value"] for t in g.get("Tags", [])}, g


def group_of_instance(iid):
    out = admin("autoscaling").describe_auto_scaling_instances(InstanceIds=[iid])
    inst = out["AutoScalingInstances"]
    if not inst:
        return None
    return inst[0]["AutoScalingGroupName"]


def secret_arn(secret_id):
    try:
        d = admin("secretsmanager").describe_secret(SecretId=secret_id)
        return d["ARN"], {t["Key"]: t["Value"] for t in d.get("Tags", [])}
    except Exception:
        if secret_id.startswith("arn:"):
            return secret_id, {}
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_id}-??????", {}


def instance_tags(iid):
    try:
        r = admin("ec2").describe_instances(InstanceIds=[iid])["Reservations"]
        return {t["Key"]: t["Value"] for t in r[0]["Instances"][0].get("Tags", [])}
    except Exception:
        return {}


def indexed(p, prefix):
    """Values of Prefix.1, Prefix.2, ... (query protocol lists)."""
    out, i = [], 1
    while f"{prefix}.{i}" in p:
        out.append(p[f"{prefix}.{i}"])
        i += 1
    return out


def requests_for(service, action, p):
    """[(iam_action, [resource ARNs], condition context)] a call needs."""
    ctx = {}
    full = f"{service}:{action}"
    if service == "autoscaling":
        if action in ("SetDesiredCapacity", "UpdateAutoScalingGroup", "DeleteAutoScalingGroup",
                      "PutWarmPool", "DeleteWarmPool"):
            arn, tags, g = group_arn(p.get("AutoScalingGroupName", ""))
            ctx = {f"autoscaling:ResourceTag/{k}": v for k, v in tags.items()}
            ctx.update({f"aws:ResourceTag/{k}": v for k, v in tags.items()})
            reqs = [(full, [arn], ctx)]
            if action == "UpdateAutoScalingGroup" and g is not None and (
                any(k.startswith("LaunchTemplate") or k.startswith("MixedInstancesPolicy") for k in p)
            ):
                reqs += launch_checks(g, p)
            return reqs
        if action in ("CreateOrUpdateTags", "DeleteTags"):
            names = {v for k, v in p.items() if re.match(r"Tags\.member\.\d+\.ResourceId$", k)}
            reqs = []
            for n in sorted(names):
                arn, tags, _ = group_arn(n)
                c = {f"autoscaling:ResourceTag/{k}": v for k, v in tags.items()}
                reqs.append((full, [arn], c))
            return reqs or [(full, ["*"], {})]
        if action in ("TerminateInstanceInAutoScalingGroup", "SetInstanceHealth",
                      "CompleteLifecycleAction", "RecordLifecycleActionHeartbeat"):
            iid = p.get("InstanceId", "")
            name = group_of_instance(iid) or p.get("AutoScalingGroupName")
            if not name:
                return [(full, [f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/?"], {})]
            arn, tags, _ = group_arn(name)
            c = {f"autoscaling:ResourceTag/{k}": v for k, v in tags.items()}
            return [(full, [arn], c)]
        return [(full, ["*"], {})]
    if service == "secretsmanager":
        if action in ("GetSecretValue", "DescribeSecret", "PutSecretValue"):
            arn, tags = secret_arn(p.get("SecretId", ""))
            return [(full, [arn], {f"secretsmanager:ResourceTag/{k}": v for k, v in tags.items()})]
        return [(full, ["*"], {})]
    if service == "ec2":
        if action == "CreateTags":
            reqs = []
            keys = [p[k] for k in p if re.match(r"Tag\.\d+\.Key$", k)]
            for rid in indexed(p, "ResourceId"):
                kind = "instance" if rid.startswith("i-") else "*"
                arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{rid}"
                tags = instance_tags(rid) if kind == "instance" else {}
                c = {f"aws:ResourceTag/{k}": v for k, v in tags.items()}
                c["aws:TagKeys"] = keys
                for k in p:
                    mk = re.match(r"Tag\.(\d+)\.Key$", k)
                    if mk:
                        c[f"aws:RequestTag/{p[k]}"] = p.get(f"Tag.{mk.group(1)}.Value", "")
                reqs.append((full, [arn], c))
            return reqs
        return [(full, ["*"], {})]
    if service == "ssm":
        if action in ("GetParameter", "PutParameter", "DeleteParameter"):
            name = p.get("Name", "")
            path = name if name.startswith("/") else f"/{name}"
            return [(full, [f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{path}"], {})]
        return [(full, ["*"], {})]
    if service == "logs":
        group = p.get("logGroupName", "")
        base = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}"
        if action == "CreateLogGroup":
            return [(full, [f"{base}:log-stream:"], {})]
        if action in ("CreateLogStream", "PutLogEvents"):
            return [(full, [f"{base}:log-stream:{p.get('logStreamName', '')}"], {})]
        if action in ("PutRetentionPolicy", "DeleteLogGroup", "FilterLogEvents", "TagLogGroup"):
            return [(full, [f"{base}:*"], {})]
        return [(full, ["*"], {})]
    return [(full, ["*"], {})]


def launch_checks(g, p):
    """What AWS checks on the caller's behalf when a group's launch settings
    change: ec2:RunInstances on every resource the launch template names, and
    iam:PassRole for its instance profile's role."""
    ec2 = admin("ec2")
    spec = g.get("LaunchTemplate") or g.get("MixedInstancesPolicy", {}).get(
        "LaunchTemplate", {}).get("LaunchTemplateSpecification")
    lt_id = p.get("MixedInstancesPolicy.LaunchTemplate.LaunchTemplateSpecification.LaunchTemplateId") or \
        p.get("LaunchTemplate.LaunchTemplateId") or (spec or {}).get("LaunchTemplateId")
    lt_name = p.get("MixedInstancesPolicy.LaunchTemplate.LaunchTemplateSpecification.LaunchTemplateName") or \
        p.get("LaunchTemplate.LaunchTemplateName") or (spec or {}).get("LaunchTemplateName")
    if lt_id:
        v = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Latest"])
    else:
        v = ec2.describe_launch_template_versions(LaunchTemplateName=lt_name, Versions=["$Latest"])
    ver = v["LaunchTemplateVersions"][0]
    lt_id = ver["LaunchTemplateId"]
    data = ver["LaunchTemplateData"]
    lt_arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/{lt_id}"
    res = [lt_arn, f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*",
           f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*", f"arn:aws:ec2:{REGION}:{ACCOUNT}:network-interface/*"]
    if data.get("ImageId"):
        res.append(f"arn:aws:ec2:{REGION}::image/{data['ImageId']}")
    if data.get("KeyName"):
        res.append(f"arn:aws:ec2:{REGION}:{ACCOUNT}:key-pair/{data['KeyName']}")
    for sg in data.get("SecurityGroupIds", []):
        res.append(f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/{sg}")
    for ni in data.get("NetworkInterfaces", []):
        for sg in ni.get("Groups", []):
            res.append(f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/{sg}")
        if ni.get("SubnetId"):
            res.append(f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/{ni['SubnetId']}")
    for sn in filter(None, (g.get("VPCZoneIdentifier") or "").split(",")):
        res.append(f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/{sn}")
    ctx = {"ec2:LaunchTemplate": lt_arn}
    reqs = [("ec2:RunInstances", sorted(set(res)), ctx)]
    if data.get("TagSpecifications"):
        reqs.append(("ec2:CreateTags", [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*",
                                         f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*"],
                     {"ec2:CreateAction": "RunInstances"}))
    prof = data.get("IamInstanceProfile", {})
    pname = prof.get("Name") or (prof.get("Arn", "").rsplit("/", 1)[-1] if prof.get("Arn") else None)
    if pname:
        try:
            roles = admin("iam").get_instance_profile(InstanceProfileName=pname)["InstanceProfile"]["Roles"]
            for r in roles:
                reqs.append(("iam:PassRole", [r["Arn"]], {"iam:PassedToService": "ec2.amazonaws.com"}))
        except Exception:
            pass
    return reqs


# --------------------------------------------------------------------------
# Policy evaluation

# Condition keys this evaluator models: when the context lacks one, AWS
# treats the condition as not met; any other key makes the outcome undecided.
MODELLED = re.compile(
    r"^(aws:ResourceTag/.+|aws:RequestTag/.+|aws:TagKeys|autoscaling:ResourceTag/.+|"
    r"secretsmanager:ResourceTag/.+|ec2:LaunchTemplate|ec2:CreateAction|iam:PassedToService)$",
    re.I,
)


def policies_of(role):
    try:
        return role_policies(role)
    except Exception:  # no such role: no policies
        return []


def role_policies(role):
    iam = admin("iam")
    docs = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        d = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        docs.append(json.loads(urllib.parse.unquote(d)) if isinstance(d, str) else d)
    for a in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        pol = iam.get_policy(PolicyArn=a["PolicyArn"])["Policy"]
        v = iam.get_policy_version(PolicyArn=a["PolicyArn"], VersionId=pol["DefaultVersionId"])
        d = v["PolicyVersion"]["Document"]
        docs.append(json.loads(urllib.parse.unquote(d)) if isinstance(d, str) else d)
    return docs


def as_list(x):
    return x if isinstance(x, list) else [x]


def match(pattern, value):
    return fnmatchcase(value.lower(), pattern.lower())


def condition(cond, ctx):
    """True, False, or a string: why it cannot be decided here."""
    for op, kv in cond.items():
        base = op.split(":", 1)[-1]
        qualifier = op.split(":", 1)[0] if ":" in op else ""
        if_exists = base.endswith("IfExists")
        base = base[: -len("IfExists")] if if_exists else base
        for key, wanted in kv.items():
            if not MODELLED.match(key):
                return f"condition key {key} is not modelled"
            wanted = [str(w) for w in as_list(wanted)]
            have = ctx.get(key)
            if have is None:
                if if_exists:
                    continue
                return False
            values = as_list(have)
            if base in ("StringEquals", "ArnEquals"):
                test = lambda v: any(v == w for w in wanted)
            elif base in ("StringLike", "ArnLike"):
                test = lambda v: any(match(w, v) for w in wanted)
            elif base == "StringEqualsIgnoreCase":
                test = lambda v: any(v.lower() == w.lower() for w in wanted)
            elif base == "StringNotEquals":
                test = lambda v: all(v != w for w in wanted)
            else:
                return f"condition operator {op} is not modelled"
            if qualifier == "ForAllValues":
                ok = all(test(v) for v in values)
            elif qualifier == "ForAnyValue":
                ok = any(test(v) for v in values)
            else:
                ok = all(test(v) for v in values)
            if not ok:
                return False
    return True


def evaluate(role, action, resource, ctx):
    """("allow" | "deny" | "undecided", why)."""
    allowed, undecided = None, None
    for doc in policies_of(role):
        for st in as_list(doc.get("Statement", [])):
            acts = as_list(st.get("Action", []))
            if not any(match(a, action) for a in acts):
                continue
            if not any(match(r, resource) for r in as_list(st.get("Resource", []))):
                continue
            c = condition(st.get("Condition", {}), ctx)
            sid = st.get("Sid", "?")
            if st.get("Effect") == "Deny" and c is True:
                return "deny", f"explicit deny in {sid}"
            if st.get("Effect") == "Allow":
                if c is True:
                    allowed = sid
                elif isinstance(c, str):
                    undecided = f"{sid}: {c}"
    if allowed:
        return "allow", allowed
    if undecided:
        return "undecided", undecided
    return "deny", "no statement allows it"


# --------------------------------------------------------------------------
# AWS answers the gateway makes itself


def aws_error(service, status, code, message):
    rid = str(uuid.uuid4())
    if service in ("secretsmanager", "logs", "lambda", "ssm"):
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        return status, "application/x-amz-json-1.1", body
    if service == "ec2":
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>"
                f"<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>")
        return status, "text/xml", body.encode()
    body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
            f"</Error><RequestId>{rid}</RequestId></ErrorResponse>")
    return status, "text/xml", body.encode()


FAULTS = {
    # kind -> per service (status, code, message)
    "5xx": lambda s: (500, "InternalFailure", "We encountered an internal error. Please try again."),
    "throttle": lambda s: (
        (503, "RequestLimitExceeded", "Request limit exceeded.") if s == "ec2"
        else (400, "ThrottlingException", "Rate exceeded") if s in ("secretsmanager", "logs", "ssm")
        else (400, "Throttling", "Rate exceeded")),
}


def take_fault(match_key):
    with LOCK:
        for f in STATE["faults"]:
            if f["count"] > 0 and f["match"] == match_key:
                f["count"] -= 1
                return f
    return None


# --------------------------------------------------------------------------
# HTTP servers


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, ctype, body, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


class Gateway(Quiet):
    def do_GET(self):
        self.handle_aws("GET")

    def do_POST(self):
        self.handle_aws("POST")

    def do_PUT(self):
        self.handle_aws("PUT")

    def do_DELETE(self):
        self.handle_aws("DELETE")

    def handle_aws(self, method):
        body = self.body()
        raw_path, _, raw_query = self.path.partition("?")
        record = {"time": time.time(), "method": method, "tls": isinstance(self.connection, ssl.SSLSocket)}
        try:
            akid, service = verify_sigv4(method, raw_path, raw_query, self.headers, body)
        except Refused as e:
            record.update({"decision": "refused", "status": e.status, "code": e.code, "why": e.message})
            with LOCK:
                STATE["calls"].append(record)
            status, ctype, out = aws_error("autoscaling", e.status, e.code, e.message)
            return self.reply(status, ctype, out)
        cred = STATE["creds"][akid]
        p, action = params_of(self.headers, body, raw_query)
        record.update({"principal": cred["role"], "service": service, "action": f"{service}:{action}",
                       "signature": "valid"})
        fault = take_fault(f"{service}:{action}")
        if fault:
            status, code, message = FAULTS[fault["kind"]](service)
            record.update({"decision": "fault", "status": status, "code": code})
            with LOCK:
                STATE["calls"].append(record)
            status, ctype, out = aws_error(service, status, code, message)
            return self.reply(status, ctype, out)
        checks = []
        try:
            needed = requests_for(service, action, p)
        except Exception as e:  # the resource could not be resolved
            needed = [(f"{service}:{action}", ["?"], {})]
            record["resolve_error"] = str(e)
        verdict = "allow"
        for iam_action, resources, ctx in needed:
            for r in resources:
                d, why = evaluate(cred["role"], iam_action, r, ctx)
                checks.append({"action": iam_action, "resource": r, "decision": d, "why": why})
                if d == "deny":
                    verdict = "deny"
                elif d == "undecided" and verdict == "allow":
                    verdict = "undecided"
        record["checks"] = checks
        record["decision"] = verdict
        if verdict == "deny":
            first = next(c for c in checks if c["decision"] == "deny")
            msg = (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{cred['role']}/test is not authorized "
                   f"to perform: {first['action']} on resource: {first['resource']} because {first['why']}")
            code = "UnauthorizedOperation" if service == "ec2" else (
                "AccessDeniedException" if service in ("secretsmanager", "logs", "ssm") else "AccessDenied")
            status, ctype, out = aws_error(service, 400 if service in ("secretsmanager", "logs", "ssm") else 403, code, msg)
            record.update({"status": status, "code": code})
            with LOCK:
                STATE["calls"].append(record)
            return self.reply(status, ctype, out)
        if f"{service}:{action}" == "autoscaling:CompleteLifecycleAction":
            # moto does not implement it (500): the gateway answers, as AWS
            # does, and keeps what was asked for the test to read.
            record.update({"status": 200, "params": {k: p.get(k) for k in (
                "AutoScalingGroupName", "LifecycleHookName", "InstanceId", "LifecycleActionResult")}})
            with LOCK:
                STATE["calls"].append(record)
            rid = str(uuid.uuid4())
            body = ("<CompleteLifecycleActionResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">"
                    "<CompleteLifecycleActionResult/><ResponseMetadata><RequestId>"
                    f"{rid}</RequestId></ResponseMetadata></CompleteLifecycleActionResponse>")
            return self.reply(200, "text/xml", body.encode())
        # Forward to moto as sent (moto reads the service from the signature).
        req = urllib.request.Request(MOTO + self.path, data=body if body else None, method=method)
        for k, v in self.headers.items():
            if k.lower() not in ("host", "content-length", "connection", "accept-encoding"):
                req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, out, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "text/xml")
        except urllib.error.HTTPError as e:
            status, out, ctype = e.code, e.read(), e.headers.get("Content-Type", "text/xml")
        record["status"] = status
        with LOCK:
            STATE["calls"].append(record)
        self.reply(status, ctype, out)


def imds_tree_get(path):
    """A metadata path (after /latest/ or /<version>/): (status, body)."""
    im = STATE["imds"]
    if path == "user-data":
        return (200, im["user_data"]) if im["user_data"] else (404, b"")
    if path in ("", "/"):
        return 200, b"dynamic\nmeta-data\nuser-data"
    if path.startswith("dynamic"):
        m = im["meta"]
        doc = {"instanceId": m.get("instance-id"), "region": REGION, "accountId": ACCOUNT,
               "availabilityZone": m.get("placement", {}).get("availability-zone", REGION + "a"),
               "instanceType": m.get("instance-type", "t3.medium"), "imageId": m.get("ami-id"),
               "architecture": "x86_64", "privateIp": m.get("local-ipv4", "169.254.169.15")}
        tree = {"instance-identity": {"document": json.dumps(doc), "pkcs7": "stub", "signature": "stub"}}
        root, rest = tree, path[len("dynamic"):]
    elif path.startswith("meta-data"):
        root, rest = im["meta"], path[len("meta-data"):]
    else:
        return 404, b""
    node = root
    for x in [x for x in rest.split("/") if x]:
        if not isinstance(node, dict) or x not in node:
            return 404, b""
        node = node[x]
    if isinstance(node, dict):
        names = [k + "/" if isinstance(v, dict) else k for k, v in node.items()]
        return 200, "\n".join(names).encode()
    return 200, str(node).encode()


class Imds(Quiet):
    def do_PUT(self):
        self.body()
        im = STATE["imds"]
        if self.path != "/latest/api/token":
            return self.reply(404, "text/plain", b"")
        fault = take_fault("imds:PUT api/token")
        im["requests"].append(("PUT", "api/token", fault["kind"] if fault else None))
        if fault:
            status = 429 if fault["kind"] == "throttle" else 500
            return self.reply(status, "text/plain", b"fault injected")
        if self.headers.get("X-Forwarded-For"):
            return self.reply(403, "text/plain", b"")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if not ttl or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self.reply(400, "text/plain", b"")
        tok = base64.urlsafe_b64encode(os.urandom(30)).decode()
        with LOCK:
            im["tokens"].add(tok)
        self.reply(200, "text/plain", tok.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": ttl})

    def do_GET(self):
        im = STATE["imds"]
        path = self.path.split("?")[0]
        if path.startswith("/cci-test/"):
            # Test-only: the runner stand-in asks whether its job is done.
            flag = path[len("/cci-test/"):]
            return self.reply(200 if im["test_flags"].get(flag) else 404, "text/plain", b"")
        m = re.match(r"^/(latest|\d{4}-\d{2}-\d{2})/?(.*)$", path)
        if not m:
            return self.reply(200 if path == "/" else 404, "text/plain", b"latest" if path == "/" else b"")
        rel = m.group(2).rstrip("/")
        tok = self.headers.get("X-aws-ec2-metadata-token")
        if tok not in im["tokens"]:
            im["requests"].append(("GET", rel, "no-token"))
            return self.reply(401, "text/plain", b"")
        fault = take_fault("imds:GET " + rel)
        im["requests"].append(("GET", rel, fault["kind"] if fault else None))
        if fault:
            status = 429 if fault["kind"] == "throttle" else 500
            return self.reply(status, "text/plain", b"fault injected")
        status, body = imds_tree_get(rel)
        self.reply(status, "text/plain", body)


class Control(Quiet):
    def do_GET(self):
        with LOCK:
            if self.path == "/calls":
                out = json.dumps(STATE["calls"])
            elif self.path == "/imds-requests":
                out = json.dumps(STATE["imds"]["requests"])
            else:
                return self.reply(404, "text/plain", b"")
        self.reply(200, "application/json", out.encode())

    def do_POST(self):
        v = json.loads(self.body() or b"{}")
        with LOCK:
            if self.path == "/creds":
                STATE["creds"][v["access_key_id"]] = {
                    "secret": v["secret_access_key"], "token": v.get("session_token"), "role": v["role"]}
            elif self.path == "/faults":
                for f in v:
                    f.setdefault("count", 1)
                    STATE["faults"].append(f)
            elif self.path == "/imds":
                im = STATE["imds"]
                if "user_data_b64" in v:
                    im["user_data"] = base64.b64decode(v["user_data_b64"])
                if "meta" in v:
                    im["meta"] = v["meta"]
                for k, val in v.get("set", {}).items():
                    node = im["meta"]
                    parts = k.split("/")
                    for x in parts[:-1]:
                        node = node.setdefault(x, {})
                    if val is None:
                        node.pop(parts[-1], None)
                    else:
                        node[parts[-1]] = val
                im["test_flags"].update(v.get("flags", {}))
            elif self.path == "/reset-calls":
                STATE["calls"].clear()
            else:
                return self.reply(404, "text/plain", b"")
        self.reply(200, "application/json", b"{}")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def tls_context():
    """A server certificate for the AWS endpoint names, signed by the image's CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key(open(CFG["ca_key"], "rb").read(), None)
    ca = x509.load_pem_x509_certificate(open(CFG["ca_cert"], "rb").read())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = [f"{s}.{REGION}.amazonaws.com" for s in ("secretsmanager", "autoscaling", "ec2", "logs", "sts")]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d = os.path.dirname(sys.argv[1])
    cpath, kpath = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
    open(cpath, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(kpath, "wb").write(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cpath, kpath)
    return ctx


def serve(handler, tls=None):
    srv = Server(("127.0.0.1", 0), handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def main():
    ports = {"aws_http": serve(Gateway), "imds": serve(Imds), "control": serve(Control)}
    if CFG.get("ca_key"):
        ports["aws_https"] = serve(Gateway, tls_context())
    print(json.dumps(ports), flush=True)
    # Ends when the test closes our stdin (or kills us).
    sys.stdin.read()


if __name__ == "__main__":
    main()
