"""
test_capture_ingest.py — capture mode's direct path (issue 11 item 1): a message goes from end
of data (or POST /api/v1/send) straight into the capture store, group-committed, and is
answered only once its row is committed and synced. No spool copy exists, so a kill -9 after
an answer must find the message in the store itself.

Fault points (debug builds: TERN_TEST_FAULT=NAME[:N], the Nth batch): capture_take (a batch
taken, nothing stored) and capture_commit (committed and synced, no answer sent) stop the
committer for good; the test waits for `event=fault_point` in the log and kills -9 there, so
each phase is hit exactly, with no timing. Messages go one at a time over one connection, so
each batch holds exactly one message and the Nth batch is the Nth message.

Owns: only these scenarios (listing right after the 250 under load and kill -9 under load
are test_capture_visible.py's). Never: waits without a bound or talks beyond 127.0.0.1.
"""

import smtplib
import threading
import time
import uuid

import pytest

from capture_harness import capture_factory  # noqa: F401

SMTP_TIMEOUT = 30.0
FAULT_WAIT = 30.0


def message(tag, n):
    mid = f"ci-{tag}-{n}@ingest.test"
    raw = (f"From: <sender@ingest.test>\r\nTo: <dev@ingest.test>\r\nSubject: ingest {tag} {n}\r\n"
           f"Message-ID: <{mid}>\r\n\r\nbody of message {n}\r\n")
    return mid, raw.encode()


def message_ids(cap):
    r = cap.request("GET", "/api/v1/messages", query={"limit": "100000"})
    assert r.status == 200, r
    return [m["MessageID"] for m in r.json()["messages"]]


def start_with_fault(cap, monkeypatch, point):
    monkeypatch.setenv("TERN_TEST_FAULT", point)
    try:
        cap.start()
    finally:
        monkeypatch.delenv("TERN_TEST_FAULT", raising=False)
    if f"event=fault_armed point={point.split(':')[0]} " not in cap.log():
        cap.stop()
        pytest.skip("this tern binary has no fault points (a release build, NDEBUG); "
                    "`make test` builds Debug, which has them")


def wait_log(cap, text, timeout=FAULT_WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in cap.log():
            return True
        time.sleep(0.05)
    return False


def send_until_stuck(cap, tag, count, acked, errors):
    """Sends count messages one at a time; acked gets each Message-ID that got its 250."""
    try:
        with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=SMTP_TIMEOUT) as s:
            for n in range(count):
                mid, raw = message(tag, n)
                s.sendmail("sender@ingest.test", ["dev@ingest.test"], raw)
                acked.append(mid)
    except (OSError, smtplib.SMTPException) as e:
        errors.append(repr(e))  # expected once the daemon is killed


@pytest.mark.parametrize("point,stuck_listed", [("capture_take", False),
                                                ("capture_commit", True)])
def test_kill9_in_each_phase_keeps_every_answered_message(capture_factory, monkeypatch,
                                                          point, stuck_listed):
    cap = capture_factory(start=False)
    start_with_fault(cap, monkeypatch, f"{point}:6")  # the 6th message's batch
    tag = uuid.uuid4().hex[:8]
    acked, errors = [], []
    t = threading.Thread(target=send_until_stuck, args=(cap, tag, 20, acked, errors))
    t.start()
    assert wait_log(cap, f"event=fault_point point={point}"), cap.log_tail()
    # the committer is stopped for good: the 6th message never gets its answer
    time.sleep(0.2)
    assert len(acked) == 5, (acked, errors)
    cap.kill9()
    t.join(SMTP_TIMEOUT + 5)
    assert not t.is_alive(), "the sender hung"

    cap.start()
    ids = message_ids(cap)
    ours = [m for m in ids if m.startswith(f"ci-{tag}-")]
    lost = [m for m in acked if m not in ours]
    assert not lost, f"{len(lost)} of {len(acked)} answered messages lost: {lost}"
    assert len(ours) == len(set(ours)), f"stored twice: {sorted(ours)}"
    stuck = f"ci-{tag}-5@ingest.test"
    # capture_take: nothing of it was stored; capture_commit: stored, only the 250 was missing
    # (the client retries: a duplicate is allowed, a loss never).
    assert (stuck in ours) == stuck_listed, (point, sorted(ours))
    assert len(ours) == 5 + stuck_listed


def test_kill9_right_after_api_send_keeps_the_message(capture_factory):
    cap = capture_factory()
    ids = []
    for n in range(20):
        body = {"From": {"Email": "api@ingest.test"}, "To": [{"Email": "dev@ingest.test"}],
                "Subject": f"api kill {n}", "Text": "hello"}
        r = cap.request("POST", "/api/v1/send", body)
        assert r.status == 200, r
        ids.append(r.json()["ID"])
    cap.kill9()  # at once: the 200 promised the message is on disk
    cap.start()
    for i in ids:
        r = cap.request("GET", f"/api/v1/message/{i}")
        assert r.status == 200, (i, r)


def test_concurrent_api_and_smtp_share_group_commits(capture_factory):
    """SMTP and API messages arriving together are all answered and each listed once."""
    cap = capture_factory()
    tag = uuid.uuid4().hex[:8]
    acked, errors = [], []
    lock = threading.Lock()

    def smtp_sender(c):
        try:
            with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=SMTP_TIMEOUT) as s:
                for n in range(30):
                    mid, raw = message(f"{tag}-s{c}", n)
                    s.sendmail("sender@ingest.test", ["dev@ingest.test"], raw)
                    with lock:
                        acked.append(mid)
        except (OSError, smtplib.SMTPException) as e:
            errors.append(repr(e))

    def api_sender():
        for n in range(30):
            body = {"From": {"Email": "api@ingest.test"}, "To": [{"Email": "dev@ingest.test"}],
                    "Subject": f"api {tag} {n}", "Text": "hello",
                    "Headers": {"Message-ID": f"<ci-{tag}-api-{n}@ingest.test>"}}
            r = cap.request("POST", "/api/v1/send", body)
            if r.status != 200:
                errors.append(repr(r))
                return
            with lock:
                acked.append(f"ci-{tag}-api-{n}@ingest.test")

    threads = [threading.Thread(target=smtp_sender, args=(c,)) for c in range(4)]
    threads.append(threading.Thread(target=api_sender))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    assert not errors, errors[:3]
    ids = message_ids(cap)
    ours = [m for m in ids if m.startswith(f"ci-{tag}-")]
    assert sorted(ours) == sorted(acked)
    assert len(ours) == 4 * 30 + 30
