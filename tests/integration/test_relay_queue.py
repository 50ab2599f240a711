"""Relay control (no open relay) and queue control through the control socket."""

import re
import time

import pytest

from conftest import Raw, expect, make_message

# Relayed recipients wait on the suite's dead DNS; at the fixture's SIGTERM that attempt
# holds tern for the whole shutdown_grace (5 s in conftest). Nothing here is about the
# grace, so a short one ends each test sooner.
pytestmark = pytest.mark.tern_config({"limits": {"shutdown_grace": Raw("1s")}})


def relay_message(tern, subject, rcpt="bob@remote.example.org"):
    with tern.client(source="127.0.0.2") as c:
        qid = c.send_message("carol@example.test", [rcpt], make_message(subject, to=rcpt))
    return qid


def rcpt_lines(listing, rcpt):
    return [ln for ln in listing.splitlines() if rcpt in ln]


def test_relay_denied_from_outside_relay_networks(tern):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<alice@example.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<bob@remote.example.org>"), 550, "5.7.1")
        expect(c.cmd("RCPT TO:<bob@sub.example.test>"), 550, "5.7.1")  # not a local domain
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
    tern.wait_log(r"event=rejected.*bob@remote\.example\.org|bob@remote\.example\.org.*event=rejected")


@pytest.mark.parametrize("rcpt", ["<@relay.example.org:bob@remote.example.org>",
                                  "<bob%remote.example.org@example.test>",
                                  "<bob@remote.example.org.>"])
def test_relay_tricks_denied(tern, rcpt):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        r = c.cmd(f"RCPT TO:{rcpt}")
        assert r.code >= 500, f"{rcpt} accepted: {r!r}"


def test_relay_allowed_from_relay_network_and_waits_in_queue(tern):
    qid = relay_message(tern, "relayed", "bob@remote.example.org")
    out = tern.queue_list()
    assert qid in out, out
    assert "carol@example.test" in out, out
    lines = rcpt_lines(out, "bob@remote.example.org")
    assert lines and re.search(r"\b(queued|deferred)\b", lines[0]), out
    time.sleep(1.0)
    out = tern.queue_list()
    lines = rcpt_lines(out, "bob@remote.example.org")
    assert lines and re.search(r"\b(queued|deferred)\b", lines[0]), "remote recipient should wait in the queue:\n" + out


def test_mixed_local_and_remote_recipients(tern):
    with tern.client(source="127.0.0.2") as c:
        qid = c.send_message("carol@example.test", ["alice@example.test", "dave@remote.example.org"],
                             make_message("mixed"))
    tern.wait_mail_with("alice@example.test", "mixed")
    deadline = time.monotonic() + 10
    while True:
        out = tern.queue_list()
        a = rcpt_lines(out, "alice@example.test")
        d = rcpt_lines(out, "dave@remote.example.org")
        if d and re.search(r"\b(queued|deferred)\b", d[0]) and (not a or re.search(r"\bdelivered\b", a[0])):
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    show = tern.cli("queue", "show", qid, check=True).stdout
    assert qid in show and "dave@remote.example.org" in show and re.search(r"\b(queued|deferred)\b", show), show


def test_queue_show_delete_flush(tern):
    q1 = relay_message(tern, "to-delete", "x@remote.example.org")
    q2 = relay_message(tern, "to-keep", "y@remote.example.org")
    show = tern.cli("queue", "show", q1, check=True).stdout
    assert q1 in show and "carol@example.test" in show and "x@remote.example.org" in show, show
    assert re.search(r"\b(queued|deferred)\b", show), show

    r = tern.cli("queue", "show", "0000000000000000")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "no such message" in (r.stdout + r.stderr).lower()

    tern.cli("queue", "delete", q1, check=True)
    out = tern.queue_list()
    assert q1 not in out and q2 in out, out
    r = tern.cli("queue", "show", q1)
    assert r.returncode == 1 and "no such message" in (r.stdout + r.stderr).lower()
    r = tern.cli("queue", "delete", q1)
    assert r.returncode != 0, "deleting twice should fail"

    r = tern.cli("queue", "flush")
    assert r.returncode == 0, r.stderr
    assert q2 in tern.queue_list()


def test_queue_survives_restart(tern):
    qid = relay_message(tern, "persist", "z@remote.example.org")
    assert tern.stop() == 0
    tern.start()
    out = tern.queue_list()
    assert qid in out and "z@remote.example.org" in out, out


def test_queue_cli_without_daemon_fails_cleanly(tern):
    tern.stop()
    t0 = time.monotonic()
    r = tern.cli("queue", "list")
    assert r.returncode != 0
    assert time.monotonic() - t0 < 10
    assert r.stderr.strip(), "no message saying the daemon is not reachable"
