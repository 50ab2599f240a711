"""
test_api_mailpit_js.py — the npm `mailpit-api` client (issue 12 item 9): the very same node
script (tests/js/mailpit_send.mjs, MailpitClient.sendMessage, i.e. Mailpit's POST
/api/v1/send) sends through `tern serve` with an API key (Basic auth, the only one the client
knows) and through `tern capture` without one — "the same code in development and
production". What arrives is parsed with Python's email package: the local Maildir of serve,
capture's own message API.

The client is installed at test time from tests/js/package.json + package-lock.json (pinned,
`npm ci`, into tests/js/node_modules); node and npm come from scripts/install-deps.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import email
import email.policy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from capture_harness import capture, capture_factory  # noqa: F401  (fixtures)
from conftest import free_port, start_on_free_port
from test_api import create_key, wait_ready_http

JS_DIR = Path(__file__).resolve().parent.parent / "js"


@pytest.fixture(scope="module")
def mailpit_js():
    """The pinned mailpit-api, npm-installed if missing; skips only without node or npm."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed (apt-get install nodejs npm; scripts/install-deps)")
    if not (JS_DIR / "node_modules" / "mailpit-api" / "package.json").is_file():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                            "--loglevel=error"], cwd=JS_DIR, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300, text=True)
        assert r.returncode == 0, f"npm ci in tests/js failed:\n{r.stdout[-3000:]}"
    return JS_DIR / "mailpit_send.mjs"


def run_js(script, base, token=None):
    args = ["node", str(script), base] + ([token] if token else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def check_message(m):
    assert m["Subject"] == "sent with mailpit-api"
    assert m["From"].addresses[0].addr_spec == "app@example.test"
    assert m["To"].addresses[0].addr_spec == "alice@example.test"
    body = m.get_body(("plain",)).get_content()
    html = m.get_body(("html",)).get_content()
    assert body.rstrip("\r\n") == "plain part from node" and "<b>node</b>" in html
    att = [(p.get_filename(), p.get_payload(decode=True)) for p in m.iter_attachments()]
    assert att == [("note.txt", b"attached from node\n")]


def test_mailpit_api_client_sends_through_tern_serve(tern_factory, mailpit_js):
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    token = create_key(t, "app", "--from-domain", "example.test")
    start_on_free_port(t)
    wait_ready_http(port)
    base = f"http://127.0.0.1:{port}"

    # without the key: the client reports the refusal, nothing is queued
    r = run_js(mailpit_js, base)
    assert r.returncode == 1 and "ERROR" in r.stdout and "401" in r.stdout, r.stdout + r.stderr

    r = run_js(mailpit_js, base, token)
    assert r.returncode == 0, r.stdout + r.stderr
    qid = json.loads(r.stdout)["ID"]
    (_, data), = t.wait_mail("alice@example.test")
    m = email.message_from_bytes(data, policy=email.policy.default)
    check_message(m)
    assert qid in m["Received"], (qid, m["Received"])  # the ID is tern's queue id
    assert "key=app" in t.log()


def test_same_script_against_tern_capture(capture, mailpit_js):  # noqa: F811
    r = run_js(mailpit_js, f"http://127.0.0.1:{capture.http_port}")
    assert r.returncode == 0, r.stdout + r.stderr
    mid = json.loads(r.stdout)["ID"]
    raw = capture.request("GET", f"/api/v1/message/{mid}/raw")
    assert raw.status == 200, raw
    check_message(email.message_from_bytes(raw.body, policy=email.policy.default))
    info = capture.request("GET", f"/api/v1/message/{mid}")
    assert info.status == 200 and json.loads(info.body)["Tags"] == ["js-client"], info
