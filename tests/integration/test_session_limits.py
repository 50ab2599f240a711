"""limits.inflight_memory: one budget for the memory held by every message being
received, over all connections. Many clients sending large messages at once get
452 4.3.1 once it is used up (and may retry); every message that got 250 is
delivered intact; the memory comes back when each transaction ends."""
import base64
import os
import random
import smtplib
import threading

import pytest

from conftest import Client, Raw, expect, make_message

MESSAGE_BODY = 600 * 1024  # under max_message_size (1m); each holds a 1 MiB buffer
CLIENTS = 16               # from one address, all at once
BUDGET = "4m"              # room for about three such messages


def big_message(i):
    rnd = random.Random(i)
    raw = bytes(rnd.getrandbits(8) for _ in range(MESSAGE_BODY * 3 // 4))
    b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return make_message(f"inflight {i}", body=b64.decode())


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return -1


@pytest.fixture
def small_asan_quarantine(monkeypatch):
    # A sanitizer build keeps freed memory in quarantine, which would blur the
    # RSS printed below; a plain build ignores the variable.
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8")


def send_half_then_rest(port, i, msg, mode, barrier, results):
    """One client: begins its message, sends half of it, waits until every client
    is in the middle of its own (so they all hold memory at once), then ends it.
    results[i] = the final reply code (250 or 452) and enhanced code."""
    half = len(msg) // 2
    c = Client(port, timeout=60)
    try:
        c.ehlo()
        params = f" SIZE={len(msg)}" if mode == "size" else ""
        expect(c.cmd(f"MAIL FROM:<sender{i}@example.org>{params}"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        if mode == "bdat":
            c.send(b"BDAT %d\r\n" % half + msg[:half])
            first = c.reply()
            barrier.wait()
            rest = msg[half:]
            c.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
            r = c.reply()
            assert first.code == 250 or (first.code, first.enh) == (452, "4.3.1"), first
        else:
            r = c.cmd("DATA")
            if r.code == 354:
                c.send(msg[:half])
                barrier.wait()
                c.send(msg[half:] + b".\r\n")
                r = c.reply()
            else:
                barrier.wait()
        results[i] = (r.code, r.enh, r.queue_id())
        expect(c.cmd("QUIT"), 221)
    except BaseException as e:  # the barrier must not hang the others
        barrier.abort()
        results[i] = e
    finally:
        c.close()


@pytest.mark.tern_config({"limits": {"inflight_memory": Raw(BUDGET),
                                     "max_connections_per_ip": 40,
                                     "data_timeout": Raw("60s"), "idle_timeout": Raw("60s")}})
def test_inflight_budget_refuses_with_452_and_delivers_the_rest(small_asan_quarantine, tern):
    msgs = [big_message(i) for i in range(CLIENTS)]
    assert all(b"\r\n.\r\n" not in m and not m.startswith(b".") for m in msgs)
    modes = ["plain", "size", "bdat", "plain"]
    barrier = threading.Barrier(CLIENTS, timeout=60)
    results = [None] * CLIENTS
    rss_before = vm_rss_kb(tern.pid)
    threads = [threading.Thread(target=send_half_then_rest,
                                args=(tern.port, i, msgs[i], modes[i % len(modes)], barrier,
                                      results), daemon=True)
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    rss_peak = vm_rss_kb(tern.pid)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    for r in results:
        assert r[0] == 250 or (r[0], r[1]) == (452, "4.3.1"), r
    accepted = [i for i, r in enumerate(results) if r[0] == 250]
    refused = [i for i, r in enumerate(results) if r[0] == 452]
    print(f"\ninflight: {len(accepted)} accepted, {len(refused)} refused with 452 4.3.1; "
          f"VmRSS {rss_before} kB before, {rss_peak} kB after the burst")
    assert refused, "sixteen 600 KB messages at once fit a 4 MB budget?"
    assert accepted, "the budget let no message through"
    tern.wait_log(r"event=rejected .*code=452 reason=inflight-memory")
    # The memory came back as each transaction ended: the refused clients,
    # trying again one after the other, all get through.
    for i in refused:
        with smtplib.SMTP("127.0.0.1", tern.port, timeout=60) as s:
            s.sendmail(f"sender{i}@example.org", ["alice@example.test"], msgs[i])
    # Every message that got 250 is delivered, byte for byte.
    files = tern.wait_mail("alice@example.test", lambda d: b"Subject: inflight " in d,
                           count=CLIENTS, timeout=60)
    by_subject = {}
    for p, data in files:
        subj = data.split(b"Subject: inflight ", 1)[1].split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        by_subject.setdefault(int(subj), []).append(data)
    assert sorted(by_subject) == list(range(CLIENTS)), sorted(by_subject)
    for i, copies in by_subject.items():
        assert len(copies) == 1, f"message {i} delivered {len(copies)} times"
        body = msgs[i].split(b"\r\n\r\n", 1)[1]
        got = copies[0]
        if b"\r\n" not in got:  # Maildir files may be stored with LF line ends
            body = body.replace(b"\r\n", b"\n")
        assert got.endswith(body), f"message {i} altered"


@pytest.mark.tern_config({"limits": {"inflight_memory": Raw("1536k"),
                                     "data_timeout": Raw("30s")}})
def test_declared_size_over_budget_gets_452_at_data(tern):
    chunk = (b"y" * 998 + b"\r\n") * 700  # 700 kB: a 1 MiB buffer of the 1.5 MiB budget
    with tern.client() as holder, tern.client() as c:
        holder.ehlo()
        expect(holder.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(holder.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        holder.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        expect(holder.reply(), 250, "2.0.0")  # read and held: the budget is charged
        c.ehlo()
        # 600 kB declared does not fit what is left: refused before any byte is sent.
        expect(c.cmd("MAIL FROM:<b@example.org> SIZE=600000"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 452, "4.3.1")
        expect(c.cmd("RSET"), 250)
        # A small one still fits.
        c.send_message("b@example.org", ["bob@example.test"], make_message("small fits"),
                       mail_params="SIZE=2000", helo=False)
        # The holder ends its message: its memory comes back ...
        holder.send(b"BDAT 0 LAST\r\n")
        expect(holder.reply(), 250, "2.0.0")
        # ... and the large one goes through now.
        c.send_message("b@example.org", ["bob@example.test"],
                       make_message("large now", body="z" * 500000 + "\r\n"),
                       mail_params="SIZE=600000", helo=False)
    tern.wait_mail_with("bob@example.test", "small fits")
    tern.wait_mail_with("bob@example.test", "large now")
    tern.wait_mail("alice@example.test", lambda d: d.count(b"y" * 998) == 700)


@pytest.mark.tern_config({"limits": {"inflight_memory": Raw("1536k"),
                                     "data_timeout": Raw("30s")}})
def test_budget_running_out_mid_message_gets_452_and_session_stays_in_sync(tern):
    chunk = (b"y" * 998 + b"\r\n") * 700
    with tern.client() as holder, tern.client() as c:
        holder.ehlo()
        expect(holder.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        expect(holder.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        holder.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        expect(holder.reply(), 250, "2.0.0")  # 1 MiB of the 1.5 MiB budget is held
        c.ehlo()
        # DATA without SIZE: accepted at first, refused once it no longer fits.
        expect(c.cmd("MAIL FROM:<b@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: mid-data\r\n\r\n" + chunk + b".\r\n")
        expect(c.reply(), 452, "4.3.1")
        expect(c.cmd("NOOP"), 250)
        # BDAT: the chunk that does not fit is read and refused, and so is the
        # LAST one pipelined behind it; the transaction is over.
        expect(c.cmd("MAIL FROM:<b@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 6 LAST\r\nlast\r\n")
        expect(c.reply(), 452, "4.3.1")
        expect(c.reply(), 452, "4.3.1")
        expect(c.cmd("RCPT TO:<bob@example.test>"), 503, "5.5.1")  # no transaction now
        expect(c.cmd("NOOP"), 250)
        holder.send(b"BDAT 0 LAST\r\n")
        expect(holder.reply(), 250, "2.0.0")
        c.send_message("b@example.org", ["bob@example.test"], make_message("after-refusals"),
                       helo=False)
    tern.wait_mail_with("bob@example.test", "after-refusals")
    assert not [p for p in tern.mail_files("bob@example.test") if b"mid-data" in p.read_bytes()]
    assert len(tern.log_lines("reason=inflight-memory")) == 2  # one line per refused message


@pytest.mark.tern_config({"limits": {"inflight_memory": Raw("64k")}})
def test_message_alone_is_never_refused(tern):
    # A budget under the message size: messages come one at a time, not never.
    with tern.client() as c:
        c.send_message("a@example.org", ["alice@example.test"],
                       make_message("alone", body="w" * 300000 + "\r\n"), mail_params="SIZE=300200")
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n")
        expect(c.reply(), 250)
        expect(c.reply(), 250)
        body = b"Subject: alone-bdat\r\n\r\n" + b"v" * 200000 + b"\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        expect(c.reply(), 250, "2.0.0")
    tern.wait_mail_with("alice@example.test", "Subject: alone\r\n")
    tern.wait_mail_with("alice@example.test", "alone-bdat")


def test_check_config_prints_inflight_memory(tern_factory):
    t = tern_factory({"limits": {"inflight_memory": Raw("64m")}}, users=(), start=False)
    p = t.cli("check-config")
    assert p.returncode == 0, p.stderr
    assert "inflight_memory = 64m;" in p.stdout, p.stdout
    t = tern_factory(None, users=(), start=False)
    assert "inflight_memory = 256m;" in t.cli("check-config", check=True).stdout
