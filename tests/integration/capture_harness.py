"""
capture_harness.py — running the real `tern capture` daemon for the capture API tests (issue 4).

Owns: starting `tern capture --smtp --http --data-dir [-c CONF]` on free loopback ports with a
0755 temp dir, waiting for GET /api/v1/info to answer (bounded), a tiny HTTP client
(http.client) for the Mailpit-compatible API, a swagger-driven JSON shape checker, an aiosmtpd
sink standing in for a relayhost, and stopping every daemon it started (SIGTERM, then kill by
PID) with a sanitizer check of its log.

Never: talk to anything but 127.0.0.1, wait without a bound, signal a process it did not start,
or edit conftest.py's machinery (it only reuses its helpers).
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import (DATA, IS_ROOT, Client, free_port, kill9_tern, make_tmpdir, render_ucl,
                      tern_bin)

SWAGGER_PATH = DATA / "mailpit-api" / "swagger.json"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0
SANITIZER_MARKERS = ("AddressSanitizer", "runtime error", "LeakSanitizer",
                     "UndefinedBehaviorSanitizer")


# --------------------------------------------------------------------------
# The swagger and a small JSON-schema-like checker over it.

_swagger = None


def swagger():
    global _swagger
    if _swagger is None:
        _swagger = json.loads(SWAGGER_PATH.read_text(encoding="utf-8"))
    return _swagger


# Fields Mailpit still sends but hides from its swagger ("swagger:ignore"): clients read them.
LEGACY_FIELDS = {"MessagesSummary": {"count"}}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def resolve(schema):
    """Follows $ref ("#/definitions/X" or "#/responses/X") to (schema, name of the definition)."""
    name = None
    seen = 0
    while "$ref" in schema:
        seen += 1
        assert seen < 20, f"$ref loop at {schema}"
        _, section, key = schema["$ref"].split("/", 2)
        schema = swagger()[section][key]
        if section == "responses":
            schema = schema.get("schema", {})
        else:
            name = key
    return schema, name


def shape_errors(value, schema, where="$", all_declared=True):
    """Every way value differs from schema: required and (all_declared) declared properties
    present, no undeclared property names, primitive types, date-time format. Mailpit always
    serialises every field of its structs, so clients may rely on each declared one."""
    schema, name = resolve(schema)
    errs = []
    t = schema.get("type") or ("object" if "properties" in schema else None)
    if t == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected object, got {type(value).__name__} {value!r:.80}"]
        props = schema.get("properties", {})
        must = set(schema.get("required", [])) | (set(props) if all_declared else set())
        for k in sorted(must - set(value)):
            errs.append(f"{where}: missing property {k!r}" + (f" ({name})" if name else ""))
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                errs += shape_errors(v, props[k], f"{where}.{k}", all_declared)
            elif isinstance(extra, dict):
                errs += shape_errors(v, extra, f"{where}[{k!r}]", all_declared)
            elif k not in LEGACY_FIELDS.get(name, ()):
                errs.append(f"{where}: undeclared property {k!r}" + (f" ({name})" if name else ""))
    elif t == "array":
        if not isinstance(value, list):
            return [f"{where}: expected array, got {type(value).__name__} {value!r:.80}"]
        for i, v in enumerate(value):
            errs += shape_errors(v, schema.get("items", {}), f"{where}[{i}]", all_declared)
    elif t == "string":
        if not isinstance(value, str):
            errs.append(f"{where}: expected string, got {value!r:.80}")
        elif schema.get("format") == "date-time" and not RFC3339.match(value):
            errs.append(f"{where}: not an RFC 3339 date-time: {value!r}")
    elif t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            errs.append(f"{where}: expected integer, got {value!r:.80}")
        elif schema.get("format", "").startswith("uint") and value < 0:
            errs.append(f"{where}: negative value {value} for {schema['format']}")
    elif t == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errs.append(f"{where}: expected number, got {value!r:.80}")
    elif t == "boolean":
        if not isinstance(value, bool):
            errs.append(f"{where}: expected boolean, got {value!r:.80}")
    return errs


def response_schema(method, route, status):
    """The swagger's schema for route's answer with status, or None if it declares none."""
    op = swagger()["paths"][route][method.lower()]
    resp = op["responses"].get(str(status))
    assert resp is not None, f"swagger declares no {status} for {method} {route}"
    while "$ref" in resp:
        resp = swagger()["responses"][resp["$ref"].rsplit("/", 1)[1]]
    return resp.get("schema")


def check_shape(value, schema, what=""):
    errs = shape_errors(value, schema)
    assert not errs, f"{what}: JSON differs from swagger:\n  " + "\n  ".join(errs[:30]) + \
        f"\nvalue: {json.dumps(value)[:1500]}"


def check_definition(value, definition):
    check_shape(value, {"$ref": f"#/definitions/{definition}"}, definition)


# --------------------------------------------------------------------------
# HTTP.


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict, lower-case names
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            pytest.fail(f"not JSON (status {self.status}): {self.body[:500]!r}")

    def __repr__(self):
        return f"<{self.status} {self.headers.get('content-type')} {self.body[:300]!r}>"


def http_request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode("utf-8")
        headers = dict(headers or {}, **{"Content-Type": "application/json"})
    elif isinstance(body, str):
        body = body.encode("utf-8")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def quote(s):
    return urllib.parse.quote(str(s), safe="")


# --------------------------------------------------------------------------
# The daemon.


class Capture:
    def __init__(self, config=None, root=None):
        self.bin = tern_bin()
        self.root = root or make_tmpdir("tern-capture-")
        os.chmod(self.root, 0o755)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(exist_ok=True)
        os.chmod(self.data_dir, 0o755)
        self.log_path = self.root / "tern.log"
        self.config_path = None
        if config is not None:
            cfg = dict(config)
            if IS_ROOT:
                cfg.setdefault("user", "nobody")
            self.config_path = self.root / "tern.conf"
            self.config_path.write_text(render_ucl(cfg) + "\n", encoding="utf-8")
        self.proc = None
        self.logf = None
        self.smtp_port = self.http_port = None

    # --- process
    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None or self.proc.poll() is not None
        self.smtp_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.smtp_port:
            self.http_port = free_port()
        args = [self.bin, "capture", "--smtp", f"127.0.0.1:{self.smtp_port}",
                "--http", f"127.0.0.1:{self.http_port}", "--data-dir", str(self.data_dir)]
        if self.config_path:
            args += ["-c", str(self.config_path)]
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tern capture exited with {self.proc.returncode} during start\n"
                            f"{self.log_tail()}")
            try:
                r = http_request(self.http_port, "GET", "/api/v1/info", timeout=2.0)
                if r.status == 200:
                    return
                last = r
            except OSError as e:
                last = e
            time.sleep(0.05)
        pytest.fail(f"GET /api/v1/info did not answer 200 within {timeout}s (last: {last!r})\n"
                    f"{self.log_tail()}")

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM; returns the exit code, or "killed-after-timeout" (killed by PID)."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is not None:
                return self.proc.returncode
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return "killed-after-timeout"
        finally:
            if self.logf:
                self.logf.close()
                self.logf = None

    def kill9(self):
        kill9_tern(self.proc)
        self.logf.close()
        self.logf = None

    # --- HTTP
    def request(self, method, path, body=None, headers=None, query=None):
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return http_request(self.http_port, method, path, body, headers)

    # --- SMTP
    def smtp(self, **kw):
        return Client(self.smtp_port, **kw)

    # --- observation
    def log(self):
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "---- tern capture log tail ----\n" + "\n".join(self.log().splitlines()[-n:])

    def sanitizer_report(self):
        text = self.log()
        return next((m for m in SANITIZER_MARKERS if m in text), None)

    def cleanup(self, keep=False):
        if not keep and not os.environ.get("TERN_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def capture_factory(request):
    """Makes and starts Capture daemons; at teardown stops each (SIGTERM) and fails the test
    if one had to be killed or its log holds a sanitizer report."""
    made = []

    def make(config=None, start=True):
        c = Capture(config)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    errors = []
    for c in made:
        rc = c.stop()
        if rc == "killed-after-timeout":
            errors.append(f"tern capture ignored SIGTERM for {STOP_TIMEOUT}s; killed\n"
                          + c.log_tail())
        bad = c.sanitizer_report()
        if bad:
            errors.append(f"{bad} in tern capture log:\n{c.log_tail(80)}")
        if failed:
            print(f"\n[tern capture data kept at {c.root}; exit {rc}]\n{c.log_tail()}")
        c.cleanup(keep=failed or bool(errors))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def capture(capture_factory):
    return capture_factory()


# --------------------------------------------------------------------------
# A relayhost stand-in: aiosmtpd on a free loopback port that records every message.


class Sink:
    def __init__(self):
        self.messages = []  # (mail_from, [rcpt], bytes)
        self.cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        with self.cond:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content or envelope.content)))
            self.cond.notify_all()
        return "250 2.0.0 OK sink"

    def wait(self, count=1, timeout=10.0):
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


@pytest.fixture
def smtp_sink():
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        pytest.skip("aiosmtpd missing (apt-get install python3-aiosmtpd)")
    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=10)
    ctl.start()
    sink.port = port
    try:
        yield sink
    finally:
        ctl.stop()
