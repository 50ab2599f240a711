"""
test_capture_visible.py — capture mode acknowledges later (DESIGN §6, issue 11 item 1).

Mailpit stores a message before it answers 250, and CI suites rely on it: they send, then
list at once. Each test here looks for a message right after its 250 (or the 2xx of
POST /api/v1/send), without waiting or retrying: it must already be listed. After a kill -9
every message that got its 250 is listed as soon as the daemon answers again, and none twice.

Owns: only these scenarios (the API's shapes are test_capture_api.py's). Never: polls for a
message it was told is stored, talks to anything but 127.0.0.1, or waits without a bound.
"""

import smtplib
import threading
import time
import urllib.parse
import uuid

from capture_harness import capture, capture_factory  # noqa: F401

CONNS = 10
PER_CONN = 100
SMTP_TIMEOUT = 30.0


def message(tag, n):
    """A small message whose Message-ID names it; returns (Message-ID without <>, bytes)."""
    mid = f"cv-{tag}-{n}@visible.test"
    body = "line of text for the capture store\r\n" * 20
    raw = (f"From: <sender@visible.test>\r\nTo: <dev@visible.test>\r\n"
           f"Subject: visible {tag} {n}\r\nMessage-ID: <{mid}>\r\n\r\n{body}")
    return mid, raw.encode()


def listed(cap, mid):
    """How many stored messages carry Message-ID mid: one search, no retry."""
    r = cap.request("GET", "/api/v1/search",
                    query={"query": f"message-id:<{mid}>", "limit": "10"})
    assert r.status == 200, r
    return r.json()["messages_count"]


def sender(cap, tag, count, on_acked, errors, stop=None):
    """One SMTP connection sending count messages; on_acked(mid) after each 250."""
    try:
        with smtplib.SMTP("127.0.0.1", cap.smtp_port, timeout=SMTP_TIMEOUT) as s:
            for n in range(count):
                if stop is not None and stop.is_set():
                    return
                mid, raw = message(tag, n)
                s.sendmail("sender@visible.test", ["dev@visible.test"], raw)  # raises unless 250
                on_acked(mid)
    except (OSError, smtplib.SMTPException) as e:
        errors.append(f"{tag}: {e!r}")


def test_every_message_is_listed_right_after_its_250(capture):
    run = uuid.uuid4().hex[:8]
    missing, errors, acked = [], [], []
    lock = threading.Lock()

    def on_acked(mid):
        n = listed(capture, mid)  # at once: the 250 promised it is stored
        with lock:
            acked.append(mid)
            if n != 1:
                missing.append((mid, n))

    threads = [threading.Thread(target=sender,
                                args=(capture, f"{run}-c{c}", PER_CONN, on_acked, errors))
               for c in range(CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SMTP_TIMEOUT * PER_CONN)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    assert not errors, errors[:5]
    assert len(acked) == CONNS * PER_CONN
    assert not missing, (f"{len(missing)} of {len(acked)} messages were not listed right after "
                         f"their 250, e.g. {missing[:5]}")


def test_api_send_is_listed_right_after_its_answer(capture):
    for n in range(20):
        body = {"From": {"Email": "api@visible.test"}, "To": [{"Email": "dev@visible.test"}],
                "Subject": f"api visible {n}", "Text": "hello"}
        r = capture.request("POST", "/api/v1/send", body)
        assert r.status == 200, r
        got = capture.request("GET", f"/api/v1/message/{urllib.parse.quote(r.json()['ID'])}")
        assert got.status == 200, (n, got)


def all_message_ids(cap):
    r = cap.request("GET", "/api/v1/messages", query={"limit": "100000"})
    assert r.status == 200, r
    return [m["MessageID"] for m in r.json()["messages"]]


def test_kill9_after_250s_keeps_every_acknowledged_message_once(capture_factory):
    cap = capture_factory()
    run = uuid.uuid4().hex[:8]
    acked, errors = [], []
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def on_acked(mid):
        with lock:
            acked.append(mid)
            if len(acked) >= 150:
                enough.set()

    threads = [threading.Thread(target=sender,
                                args=(cap, f"{run}-k{c}", 1000, on_acked, errors, stop))
               for c in range(CONNS)]
    for t in threads:
        t.start()
    assert enough.wait(120), f"only {len(acked)} messages acknowledged: {errors[:3]}"
    cap.kill9()  # while the senders are in the middle of their transactions
    stop.set()
    for t in threads:
        t.join(SMTP_TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    with lock:
        got_250 = list(acked)

    cap.start()
    # Listed as soon as the daemon answers: the store itself kept them, no retry needed.
    ids = all_message_ids(cap)
    have = set(ids)
    lost = [m for m in got_250 if m not in have]
    assert not lost, f"{len(lost)} of {len(got_250)} acknowledged messages lost, e.g. {lost[:5]}"

    # The spool hands over what it still holds (messages that got no 250, and any whose
    # spool record was not yet written): the store must not take any of them twice.
    deadline = time.monotonic() + 15
    last = None
    while time.monotonic() < deadline:
        n = len(all_message_ids(cap))
        if n == last:
            break
        last = n
        time.sleep(1.0)
    ids = all_message_ids(cap)
    dups = sorted({m for m in ids if ids.count(m) > 1})
    assert not dups, f"{len(dups)} messages stored twice, e.g. {dups[:5]}"
    assert set(got_250) <= set(ids)
    ours = [m for m in ids if m.startswith(f"cv-{run}-")]
    assert len(ours) >= len(got_250)
