"""The daemon as a process: signals, privilege drop, many connections."""

import os
import pwd
import selectors
import signal
import socket
import time

import pytest

from conftest import IS_ROOT, Client, ConnectionClosed, deep_merge, expect, make_message


def rcpt_reply(tern, rcpt):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        return c.cmd(f"RCPT TO:<{rcpt}>")


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sigterm_exits_zero_promptly(tern):
    with tern.client() as c:
        c.ehlo()
    t0 = time.monotonic()
    tern.signal(signal.SIGTERM)
    rc = tern.proc.wait(10)
    assert rc == 0, tern.log_tail()
    assert time.monotonic() - t0 < 6  # shutdown_grace = 5s


def test_sigterm_with_idle_connection_exits_within_grace(tern):
    c = tern.client()
    c.ehlo()
    t0 = time.monotonic()
    tern.signal(signal.SIGTERM)
    rc = tern.proc.wait(12)
    assert rc == 0, tern.log_tail()
    assert time.monotonic() - t0 < 8
    # the idle client was told, or at least disconnected
    try:
        r = c.reply()
        assert r.code == 421, r
    except (ConnectionClosed, ConnectionResetError):
        pass


def test_sigterm_lets_transaction_in_flight_finish(tern):
    c = tern.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: in-flight\r\n\r\nfirst half\r\n")
    tern.signal(signal.SIGTERM)
    time.sleep(0.5)
    # new connections are no longer accepted (refused, or told 421)
    try:
        with Client(tern.port, timeout=3) as n:
            assert n.greeting.code == 421, n.greeting
    except (ConnectionRefusedError, ConnectionClosed, ConnectionResetError, socket.timeout):
        pass
    assert tern.proc.poll() is None, "exited before the transaction in flight finished"
    c.send(b"second half\r\n.\r\n")
    r = expect(c.reply(), 250, "2.0.0")
    qid = r.queue_id()
    try:
        r = c.cmd("QUIT")
        assert r.code in (221, 421), r
    except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
        pass
    rc = tern.proc.wait(12)
    assert rc == 0, tern.log_tail()
    # the acknowledged message is delivered, now or after the restart
    tern.start()
    tern.wait_mail_with("alice@example.test", qid)


def test_sighup_reloads_users(tern):
    expect(rcpt_reply(tern, "carol@example.test"), 550, "5.1.1")
    tern.user_add("carol@example.test")
    # not before SIGHUP
    expect(rcpt_reply(tern, "carol@example.test"), 550, "5.1.1")
    tern.signal(signal.SIGHUP)
    wait_for(lambda: rcpt_reply(tern, "carol@example.test").code == 250, 5, "carol after SIGHUP")
    expect(rcpt_reply(tern, "carol@example.test"), 250, "2.1.5")
    with tern.client() as c:
        c.send_message("a@example.org", ["carol@example.test"], make_message("for-carol"))
    tern.wait_mail_with("carol@example.test", "for-carol")
    # user del + SIGHUP removes her again
    tern.cli("user", "del", "carol@example.test", check=True)
    tern.signal(signal.SIGHUP)
    wait_for(lambda: rcpt_reply(tern, "carol@example.test").code == 550, 5, "carol gone")
    assert tern.proc.poll() is None


def test_sighup_reloads_aliases_and_limits(tern):
    expect(rcpt_reply(tern, "sales@example.test"), 550, "5.1.1")
    # a session opened before the reload keeps working
    old = tern.client()
    old.ehlo()
    cfg = deep_merge(tern.config, {
        "aliases": {"sales@example.test": ["bob@example.test"]},
        "limits": {"max_recipients": 2},
    })
    tern.write_config(cfg)
    tern.signal(signal.SIGHUP)
    wait_for(lambda: rcpt_reply(tern, "sales@example.test").code == 250, 5, "alias after SIGHUP")
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<sales@example.test>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 452, "4.5.3")
        expect(c.cmd("DATA"), 354)
        c.send(make_message("after-reload") + b".\r\n")
        expect(c.reply(), 250, "2.0.0")
    tern.wait_mail_with("bob@example.test", "after-reload")
    expect(old.cmd("NOOP"), 250, "2.0.0")
    old.send_message("a@example.org", ["alice@example.test"], make_message("old-session"),
                     helo=False)
    tern.wait_mail_with("alice@example.test", "old-session")


def test_sighup_with_broken_config_keeps_running(tern):
    good = tern.config_path.read_text()
    tern.config_path.write_text(good + "\nlimits { max_recipients = ; }\n")
    tern.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert tern.proc.poll() is None, "a bad config on SIGHUP must not kill the daemon"
    expect(rcpt_reply(tern, "alice@example.test"), 250, "2.1.5")
    tern.config_path.write_text(good)


@pytest.mark.skipif(not IS_ROOT, reason="privilege drop needs root")
def test_drops_privileges_to_configured_user(tern):
    nobody = pwd.getpwnam("nobody")
    status = open(f"/proc/{tern.pid}/status").read()
    uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
    gids = next(ln for ln in status.splitlines() if ln.startswith("Gid:")).split()[1:]
    assert uids == [str(nobody.pw_uid)] * 4, status
    assert gids == [str(nobody.pw_gid)] * 4, status
    groups = next(ln for ln in status.splitlines() if ln.startswith("Groups:")).split()[1:]
    assert "0" not in groups, f"supplementary group root kept: {groups}"
    # every thread, not just the main one
    for tid in os.listdir(f"/proc/{tern.pid}/task"):
        st = open(f"/proc/{tern.pid}/task/{tid}/status").read()
        u = next(ln for ln in st.splitlines() if ln.startswith("Uid:")).split()[1:]
        assert u == [str(nobody.pw_uid)] * 4, f"thread {tid} still {u}"
    # and delivery works as that user
    with tern.client() as c:
        c.send_message("a@example.org", ["alice@example.test"], make_message("as-nobody"))
    (p, _), = tern.wait_mail_with("alice@example.test", "as-nobody")
    assert p.stat().st_uid == nobody.pw_uid


@pytest.mark.tern_config({"limits": {"max_connections": 1000, "max_connections_per_ip": 1000}})
def test_200_concurrent_idle_connections_get_greeting(tern):
    n = 200
    sel = selectors.DefaultSelector()
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", tern.port))
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, bytearray())
        greeted = 0
        deadline = time.monotonic() + 15
        pending = set(socks)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                try:
                    data = key.fileobj.recv(512)
                except (BlockingIOError, InterruptedError):
                    continue
                buf = key.data
                buf += data
                if b"\n" in buf or not data:
                    sel.unregister(key.fileobj)
                    pending.discard(key.fileobj)
                    assert buf.startswith(b"220"), bytes(buf)
                    greeted += 1
        assert greeted == n, f"only {greeted}/{n} greeted"
        # the server still serves a real transaction while holding them
        with tern.client() as c:
            c.send_message("a@example.org", ["alice@example.test"], make_message("with-200-idle"))
        tern.wait_mail_with("alice@example.test", "with-200-idle")
    finally:
        for s in socks:
            s.close()
