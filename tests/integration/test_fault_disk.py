"""Faults on the disk (issue 7): a full disk, kill -9 in every phase of a message's life,
damaged spool segments. DESIGN §5.1: a 250 only for a message on stable storage, and
nothing acknowledged is ever lost — delivered at least once, checked by matching the queue
ids of the Maildir files against the 250 replies.

Fault points: a debug build of tern stops the thread that reaches a named point in the
spool for good when started with TERN_TEST_FAULT=NAME[:N] (the Nth time), and logs
`event=fault_point point=NAME`; the test waits for that line and kills -9, so each phase
is hit exactly, with no timing. TERN_TEST_SEGMENT_MAX makes segments small enough for
compaction to run. Release builds compile both out (those tests then skip, saying so);
`make test` builds Debug.

The full-disk test mounts a small tmpfs as the data dir, so it needs root (CI runs as
root); the others run as any user.
"""

import contextlib
import errno
import os
import re
import shutil
import struct
import subprocess
import time

import pytest

from conftest import IS_ROOT, Client, Raw, Tern, expect, make_tmpdir

RECEIVED_ID_RE = re.compile(rb"with E?SMTP id ([0-9A-Z]{16})\b")
# "-p": a prepared segment (written full of zeros before its first record)
SEG_RE = re.compile(r"^seg-(\d{10})(?:-([0-9a-f]{16}))?(-p)?\.log$")
ALICE = "alice@example.test"
REMOTE = "someone@remote.example"  # DNS points at a closed port: stays queued, deferred
REC_MSG = 1
# Deferred local deliveries (a blocked mailbox, a full disk) are retried within seconds.
FAST_RETRY = {"delivery": {"retry_base": Raw("1s"), "retry_max": Raw("2s")}}


# --------------------------------------------------------------------------
# helpers


def delivered(tern, address=ALICE):
    """Queue ids of the messages in address's Maildir (one entry per file)."""
    ids = []
    for p in tern.mail_files(address):
        try:
            head = p.read_bytes()[:4096]
        except FileNotFoundError:
            continue
        m = RECEIVED_ID_RE.search(head)
        if m:
            ids.append(m.group(1).decode())
    return ids


def wait_delivered(tern, want, timeout=30.0, address=ALICE):
    """Waits (bounded) until every id in want is in the Maildir; returns the delivered ids."""
    deadline = time.monotonic() + timeout
    while True:
        got = delivered(tern, address)
        if set(want) <= set(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def assert_all_delivered(tern, acked, timeout=30.0):
    got = wait_delivered(tern, acked, timeout)
    missing = [q for q in acked if q not in got]
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing}\n"
                         f"{tern.log_tail(60)}")
    # at least once: one file per 250, more only as duplicates of the same ids
    assert len(got) >= len(acked)
    return got


def body(tag, size=300):
    filler = ("%s " % tag) * (size // (len(tag) + 1) + 1)
    lines = [filler[i:i + 70] for i in range(0, size, 70)]
    return (f"From: <sender@example.org>\r\nTo: <{ALICE}>\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.org>\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


def send(c, tag, rcpt=ALICE, size=300):
    """One transaction on an EHLO'd client; returns the reply to the end of data."""
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(body(tag, size) + b".\r\n")
    return c.reply()


def send_acked(tern, n, prefix, rcpt=ALICE, size=300, source=None):
    """n messages over one session; returns their queue ids (each must get 250)."""
    ids = []
    with Client(tern.port, source=source) as c:
        c.ehlo()
        for i in range(n):
            r = send(c, f"{prefix}-{i}", rcpt, size)
            expect(r, 250, "2.0.0")
            ids.append(r.queue_id())
    return ids


@contextlib.contextmanager
def env(monkeypatch, **kw):
    """Sets environment variables for a tern started inside the block."""
    for k, v in kw.items():
        monkeypatch.setenv(k, str(v))
    try:
        yield
    finally:
        for k in kw:
            monkeypatch.delenv(k, raising=False)


def start_with_fault(tern, monkeypatch, point=None, segment_max=None):
    """Starts tern with a fault point armed and/or small segments (debug builds only)."""
    extra = {}
    if point:
        extra["TERN_TEST_FAULT"] = point
    if segment_max:
        extra["TERN_TEST_SEGMENT_MAX"] = segment_max
    with env(monkeypatch, **extra):
        tern.start()
    armed = (not point or tern.log_lines("event=fault_armed", f"point={point.split(':')[0]} "))
    small = not segment_max or tern.log_lines("event=spool_test_segment_max")
    if not (armed and small):
        tern.stop()
        pytest.skip("this tern binary has no fault points (a release build, NDEBUG); "
                    "`make test` builds Debug, which has them")


def queue_ids(tern):
    return set(re.findall(r"^([0-9A-Z]{16}) ", tern.queue_list(), re.M))


def spool_dir(tern):
    return tern.data_dir / "spool"


def segments(d):
    """(number, path) of the segment files in d, in order."""
    out = []
    for p in d.iterdir() if d.exists() else []:
        m = SEG_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


class Rec:
    def __init__(self, off, length, typ, rid, hdr):
        self.off, self.len, self.type, self.id, self.hdr = off, length, typ, rid, hdr

    @property
    def end(self):
        return self.off + self.len


def records(path):
    """Walks an undamaged segment (either format: see src/queue/spool_internal.h); a
    record cut short at the end (kill -9 during a write) is left out, and so are the
    zeros after the last record of a prepared segment."""
    data = path.read_bytes()
    hl = 28 if SEG_RE.match(path.name).group(2) else 16
    out, off = [], 0
    while off + hl <= len(data):
        magic, _ver, typ, _flags, ln = struct.unpack_from("<4sBBHI", data, off)
        if magic == b"\0\0\0\0" and not data[off:].strip(b"\0"):
            break
        assert magic == b"TSPL", f"{path.name}: no record at {off}"
        if off + hl + ln > len(data):
            break
        out.append(Rec(off, hl + ln, typ, data[off + hl:off + hl + 16].decode("ascii", "replace"),
                       hl))
        off += hl + ln
    return out


def msg_records(tern):
    """{queue id: (segment path, Rec)} for every MSG record in the spool."""
    out = {}
    for _no, p in segments(spool_dir(tern)):
        for r in records(p):
            if r.type == REC_MSG:
                out[r.id] = (p, r)
    return out


def flip(path, off, mask=0x01):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ mask]))


def zero(path, start, end):
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (end - start))


def block_mailbox(tern, address=ALICE):
    """Makes local delivery to address fail (temporarily: 4.3.0, deferred) until unblock:
    its Maildir directory exists but is not writable by the daemon."""
    d = tern.maildir(address)
    d.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(d.parent.parent, 0o755)
    os.chmod(d.parent, 0o755)
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o555)


def unblock_mailbox(tern, address=ALICE):
    d = tern.maildir(address)
    os.chmod(d, 0o755)
    if IS_ROOT:
        shutil.chown(d, "nobody")


# --------------------------------------------------------------------------
# a full disk


@pytest.fixture
def small_disk():
    """A 16 MiB tmpfs mounted as a fresh data dir; unmounted afterwards. (Room, once the
    filler goes, for the Maildir copies of what the spool's prepared segments took
    while the disk was full.)"""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    root = make_tmpdir("tern-fulldisk-")
    data = root / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(data)],
                   check=True, timeout=20)
    made = []
    try:
        yield root, made
        for t in made:
            assert t.stop() != "killed-after-timeout", t.log_tail()
            t.check_sanitizers()
    finally:
        for t in made:
            t.stop()
        if subprocess.run(["umount", str(data)], timeout=20).returncode != 0:
            subprocess.run(["umount", "-l", str(data)], timeout=20)
        shutil.rmtree(root, ignore_errors=True)


def fill(path):
    """Writes path until the file system is full; returns the bytes written."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 16, 4096, 1):
            buf = b"\xa5" * chunk
            while True:
                try:
                    n += os.write(fd, buf)
                except OSError as e:
                    assert e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG), e
                    break
    finally:
        os.close(fd)
    return n


def test_full_disk_refuses_with_4xx_loses_nothing_and_recovers(small_disk):
    root, made = small_disk
    tern = Tern(FAST_RETRY, root=root)
    made.append(tern)
    tern.start()
    filler = tern.data_dir / "filler"

    acked = send_acked(tern, 5, "before")
    assert_all_delivered(tern, acked)

    # Full: every transaction that cannot be committed gets 452 4.3.1 (RFC 3463: mail
    # system full; the spool reports ENOSPC as TERN_ELIMIT), never a 250.
    fill(filler)
    refused, acked_full = [], []
    with tern.client() as c:
        c.ehlo()
        # The spool's prepared segments (written full of zeros ahead, a few MiB here)
        # still take mail on a full disk: keep sending until that space is used up too
        # (bounded: more than the whole 16 MiB disk).
        for i in range(400):
            if len(refused) >= 3:
                break
            tag = f"full-{i}"
            r = send(c, tag, size=48 * 1024)
            if r.code == 250:
                acked_full.append(r.queue_id())  # it fitted after all: must be delivered
            else:
                expect(r, 452, "4.3.1")
                assert "Insufficient system storage" in r.text, r
                refused.append(tag)
        # the session goes on after a refusal
        expect(c.cmd("NOOP"), 250)
    assert refused, "the disk never filled up: the test proved nothing"

    # A crash while the disk is full, and a start on a full disk.
    tern.kill9()
    tern.start()
    with tern.client() as c:
        c.ehlo()
        r = send(c, "full-after-restart", size=48 * 1024)
        assert r.code == 250 or r.is_(452, "4.3.1"), r
        if r.code == 250:
            acked_full.append(r.queue_id())
        else:
            refused.append("full-after-restart")

    # Space returns: mail flows again, and whatever was acknowledged arrives.
    filler.unlink()
    acked_after = send_acked(tern, 5, "after")
    assert_all_delivered(tern, acked + acked_full + acked_after)
    # and nothing that was refused shows up later (the failed batches left no trace)
    texts = [p.read_bytes() for p in tern.mail_files(ALICE)]
    for tag in refused:
        assert not any(f"Subject: {tag}\r\n".encode() in t for t in texts), f"{tag} delivered"
    assert tern.log_lines("event=spool_batch_failed"), tern.log_tail()


# --------------------------------------------------------------------------
# kill -9 in each phase


def test_kill9_during_data_loses_nothing_acknowledged(tern_factory):
    tern = tern_factory()
    acked = send_acked(tern, 3, "before")
    c = tern.client()
    c.ehlo()
    expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
    expect(c.cmd(f"RCPT TO:<{ALICE}>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(body("half-sent", 2000)[:700])  # no end of data
    tern.kill9()
    c.close()
    tern.start()
    got = assert_all_delivered(tern, acked)
    assert len(set(got)) == len(acked)
    texts = [p.read_bytes() for p in tern.mail_files(ALICE)]
    assert not any(b"Subject: half-sent" in t for t in texts)


@pytest.mark.parametrize("point,phase", [
    ("commit_write:4", "the commit batch is written, not yet synced"),
    ("commit_sync:4", "the batch is synced, its 250 not yet sent"),
    ("spool_get", "after 250, before any delivery"),
    ("update_rcpt", "during delivery: the Maildir file is written, its result not recorded"),
])
def test_kill9_in_each_phase_loses_nothing_acknowledged(tern_factory, monkeypatch, point, phase):
    tern = tern_factory(start=False)
    start_with_fault(tern, monkeypatch, point)
    name = point.split(":")[0]
    acked = []
    c = tern.client()
    c.ehlo()
    for i in range(6):
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        expect(c.cmd(f"RCPT TO:<{ALICE}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(body(f"{name}-{i}") + b".\r\n")
        if name.startswith("commit") and i == 3:
            break  # the committer stops in this batch: no reply will come
        r = expect(c.reply(), 250, "2.0.0")
        acked.append(r.queue_id())
    tern.wait_log(rf"event=fault_point point={name}\b", timeout=20)
    if name == "spool_get":
        assert not tern.mail_files(ALICE), "delivered although delivery was stopped"
    tern.kill9()
    c.close()
    tern.start()
    got = assert_all_delivered(tern, acked)
    print(f"\n{phase}: {len(acked)} acknowledged, {len(got)} files, "
          f"{len(got) - len(set(got))} duplicates")


@pytest.mark.parametrize("point", ["compact_write", "compact_sync", "reap_unlink"])
def test_kill9_during_compaction_and_removal_loses_nothing(tern_factory, monkeypatch, point):
    """Small segments; most messages are delivered at once, one in four waits for a remote
    host that never answers, so old segments are mostly dead and compaction copies their
    live messages forward. Killed in the middle: every local message is delivered, every
    remote one is still queued, exactly once."""
    tern = tern_factory(start=False)
    start_with_fault(tern, monkeypatch, point, segment_max=8192)
    local, remote = [], []
    # 127.0.0.2 may relay. Once the committer stops, replies stop: the timeout ends the
    # session (what was not answered was not acknowledged).
    with Client(tern.port, source="127.0.0.2", timeout=8) as c:
        c.ehlo()
        for i in range(40):
            far = i % 4 == 0
            try:
                r = send(c, f"{point}-{i}", REMOTE if far else ALICE, 300 if far else 2000)
            except OSError:
                assert tern.log_lines("event=fault_point"), "no reply, and not stopped"
                break
            expect(r, 250, "2.0.0")
            (remote if far else local).append(r.queue_id())
            if tern.log_lines("event=fault_point"):
                break
    tern.wait_log(rf"event=fault_point point={point}\b", timeout=40)
    tern.kill9()
    tern.start()
    assert_all_delivered(tern, local)
    queued = queue_ids(tern)
    missing = [q for q in remote if q not in queued]
    assert not missing, f"remote messages lost: {missing}\n{tern.log_tail(60)}"
    assert not tern.log_lines("event=spool_damaged"), tern.log_tail(60)


# --------------------------------------------------------------------------
# damaged segments


def stopped_with_queued_mail(tern_factory, n, size=400, segment_max=None, monkeypatch=None):
    """n acknowledged messages that are not delivered yet; tern killed -9. Without
    segment_max the mailbox refuses them for now (unblock_mailbox after the restart), so
    the segment holds their deferrals too; with it (debug builds), small segments and
    delivery stopped before it starts, so the segments hold only the messages. Returns
    (tern, ids in order)."""
    tern = tern_factory(FAST_RETRY, start=False)
    if segment_max:
        start_with_fault(tern, monkeypatch, "spool_get", segment_max)
    else:
        block_mailbox(tern)
        tern.start()
    ids = send_acked(tern, n, "dmg", size=size)
    tern.kill9()
    return tern, ids


def test_damaged_segment_costs_only_the_damaged_records(tern_factory):
    """The review finding: one flipped bit lost every message after it in its segment,
    and the segment was unlinked. Flipped bits at several places (a body, a length field,
    a magic), a zeroed range across a record boundary: every intact message is delivered,
    each damaged one is reported, and the file is kept."""
    tern, ids = stopped_with_queued_mail(tern_factory, 12)
    recs = msg_records(tern)
    assert set(ids) <= set(recs)
    (path, _), = {recs[q][0]: 1 for q in ids}.items()
    r = {i: recs[q][1] for i, q in enumerate(ids)}
    flip(path, r[2].end - 40, 0x08)             # a bit of message 2's body
    flip(path, r[5].off + 9, 0x01)              # a bit of message 5's length
    zero(path, r[7].end - 30, r[8].off + 12)    # the end of 7 and the header of 8
    flip(path, r[10].off, 0x20)                 # message 10's magic
    # (intact 9 stands between the zeroed range and 10: when records of damaged messages
    # touch, with no other record between them, they are one damaged range, and the one
    # that starts with zeros names neither; whether a deferral record falls between two
    # messages depends on timing)
    damaged = {2, 5, 7, 8, 10}
    before = path.read_bytes()

    tern.start()
    unblock_mailbox(tern)
    intact = [q for i, q in enumerate(ids) if i not in damaged]
    assert_all_delivered(tern, intact)
    got = set(delivered(tern))
    assert not got & {ids[i] for i in damaged}, "a damaged message was delivered"

    # reported: the log (one key=value line per range) and `tern queue damaged`
    lines = tern.log_lines("event=spool_damaged", "action=kept")
    assert len(lines) >= 4, tern.log_tail(60)
    for ln in lines:
        assert re.search(r"\bseg=\d+ file=\S+ offset=\d+ length=\d+ kind=\S+", ln), ln
    out = tern.cli("queue", "damaged", check=True).stdout
    ranges = [(int(a), int(b)) for a, b in re.findall(r"offset=(\d+) length=(\d+)", out)]
    for i in damaged:
        assert any(a <= r[i].off < a + n for a, n in ranges), f"message {i} not reported:\n{out}"
    # named where the damage left its id readable (8's range starts with a zeroed record)
    for i in (2, 5, 7, 10):
        assert f"id={ids[i]}" in out, f"damaged message {i} ({ids[i]}) not named:\n{out}"
    for q in intact:
        assert q not in out
    assert "warning: the spool has" in tern.queue_list()

    # kept: once nothing in it is needed, set aside in spool/damaged/, never unlinked
    aside = spool_dir(tern) / "damaged" / path.name
    deadline = time.monotonic() + 20
    while not aside.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert aside.exists() or path.exists(), "the damaged segment was deleted"
    assert aside.exists(), f"not set aside: {list(spool_dir(tern).iterdir())}"
    assert aside.read_bytes()[:len(before)] == before
    # and a restart still reports it
    tern.stop()
    tern.start()
    out = tern.cli("queue", "damaged", check=True).stdout
    assert ids[2] in out and f"damaged/{path.name}" in out, out


def test_truncated_segments_lose_only_what_was_cut(tern_factory, monkeypatch):
    """A segment cut short: the last one is trimmed as an interrupted append (no report:
    that is what a crash leaves), an older one is kept and reported. Every record before
    a cut is delivered."""
    tern, ids = stopped_with_queued_mail(tern_factory, 12, size=2000, segment_max=8192,
                                         monkeypatch=monkeypatch)
    recs = msg_records(tern)
    segs = segments(spool_dir(tern))
    assert len(segs) >= 3, segs
    (first_no, first), (last_no, last) = segs[0], segs[-1]
    in_first = [q for q in ids if recs[q][0] == first]
    in_last = [q for q in ids if recs[q][0] == last]
    assert in_first and in_last
    cut_old, cut_new = recs[in_first[-1]][1], recs[in_last[-1]][1]
    os.truncate(first, cut_old.off + cut_old.len // 2)
    os.truncate(last, cut_new.off + cut_new.len // 2)
    lost = {in_first[-1], in_last[-1]}

    tern.start()
    assert_all_delivered(tern, [q for q in ids if q not in lost])
    assert tern.log_lines("event=spool_recover", f"seg={last_no} torn_tail"), tern.log_tail()
    out = tern.cli("queue", "damaged", check=True).stdout
    assert re.search(rf"seg={first_no} .*kind=torn", out), out
    assert f"seg={last_no} " not in out, out
