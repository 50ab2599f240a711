"""test_maildir_batch.py — batched Maildir delivery (issue 11 item 4, DESIGN §6): a batch of
files is written into tmp/, synced together, renamed into new/, and each new/ directory is
synced once. A kill -9 in any of those phases loses nothing that got a 250 and, thanks to the
stable file names (maildir_stable_name), duplicates nothing and leaves nothing in tmp/ once
the message is delivered again after the restart.

Fault points (debug builds: TERN_TEST_FAULT=NAME[:N], the Nth chunk of staged files):
maildir_write (written, not synced), maildir_sync (synced, not renamed), maildir_rename (in
new/, the directory not synced), maildir_done (in new/ and synced, the spool not yet told: the
restart delivers them again and must find each file under its stable name, not write a second
one) stop the delivering thread for good; the test waits for
`event=fault_point` in the log and kills -9 there, so each phase is hit exactly. The points
are armed at the first delivery (the log says `event=fault_armed` then).

Never: waits without a bound, times anything, or talks beyond 127.0.0.1.
"""

import time

import pytest

from conftest import Raw, expect
from test_fault_disk import (ALICE, RECEIVED_ID_RE, assert_all_delivered, body, send,
                             wait_delivered)

FAULT_WAIT = 20.0


def wait_log(tern, text, timeout=FAULT_WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in tern.log():
            return True
        time.sleep(0.05)
    return False


def send_all(tern, tag, n):
    """n messages over one session, each acknowledged; returns their queue ids."""
    ids = []
    c = tern.client()
    c.ehlo()
    for i in range(n):
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        expect(c.cmd(f"RCPT TO:<{ALICE}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(body(f"{tag}-{i}") + b".\r\n")
        ids.append(expect(c.reply(), 250, "2.0.0").queue_id())
    c.close()
    return ids


@pytest.mark.parametrize("point", ["maildir_write", "maildir_sync", "maildir_rename",
                                   "maildir_done"])
def test_kill9_in_each_batch_phase_loses_and_duplicates_nothing(tern_factory, monkeypatch, point):
    tern = tern_factory({"delivery": {"retry_base": Raw("1s"), "retry_max": Raw("2s")}},
                        start=False)
    monkeypatch.setenv("TERN_TEST_FAULT", point)
    try:
        tern.start()
    finally:
        monkeypatch.delenv("TERN_TEST_FAULT", raising=False)
    acked = send_all(tern, point, 6)
    hit = wait_log(tern, f"event=fault_point point={point}")
    if not hit and not tern.log_lines("event=fault_armed", f"point={point} "):
        tern.stop()
        pytest.skip("this tern binary has no fault points (a release build, NDEBUG); "
                    "`make test` builds Debug, which has them")
    assert hit, tern.log_tail()
    tern.kill9()

    tern.start()
    got = assert_all_delivered(tern, acked)
    dups = len(got) - len(set(got))
    assert dups == 0, f"{dups} duplicates among {len(got)} files: {sorted(got)}"
    assert sorted(set(got)) == sorted(acked)
    # the retry replaced what the killed attempt left in tmp/
    deadline = time.monotonic() + 10
    tmp = tern.maildir(ALICE) / "tmp"
    while any(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(tmp.iterdir()), sorted(p.name for p in tmp.iterdir())


def test_a_burst_to_many_mailboxes_arrives_once_each(tern_factory):
    """Many messages to a few mailboxes in overlapping batches: each exactly once, in new/,
    tmp/ empty (the batch path with several directories synced once each)."""
    tern = tern_factory()
    rcpts = [ALICE, "bob@example.test"]
    acked = {r: [] for r in rcpts}
    c = tern.client()
    c.ehlo()
    for i in range(40):
        r = rcpts[i % 2]
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        expect(c.cmd(f"RCPT TO:<{r}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(body(f"burst-{i}", 2000) + b".\r\n")
        acked[r].append(expect(c.reply(), 250, "2.0.0").queue_id())
    c.close()
    for r in rcpts:
        got = wait_delivered(tern, acked[r], address=r)
        assert sorted(got) == sorted(acked[r]), r
        assert not any((tern.maildir(r) / "tmp").iterdir())


@pytest.mark.parametrize("queued_memory", ["0", "10k"])
def test_messages_past_queued_memory_are_read_back_from_the_spool(tern_factory, queued_memory):
    # limits.queued_memory bounds what committed messages keep in memory for their delivery:
    # past it (here at once, or after two of these ~4 KiB messages) delivery reads each one
    # back from the spool. Every acknowledged message still arrives, byte for byte.
    tern = tern_factory({"limits": {"queued_memory": Raw(queued_memory)}})
    c = tern.client()
    c.ehlo()
    sent = {}
    for i in range(12):
        tag = f"held-{queued_memory}-{i}"
        r = expect(send(c, tag, size=4000), 250, "2.0.0")
        sent[r.queue_id()] = body(tag, 4000)
    c.close()
    assert_all_delivered(tern, list(sent))
    for p in tern.mail_files(ALICE):
        data = p.read_bytes()
        qid = RECEIVED_ID_RE.search(data[:4096]).group(1).decode()
        assert data.endswith(sent[qid]), qid
