"""
test_api_schedule.py — scheduled sending through the native API (issue 12 item 2): `send_at`
in the future gives the message a "not before" time in the spool (spool_msg.not_before);
nothing is tried before it, the status routes and `tern queue show` say "scheduled", and the
time survives a restart of tern.

The world: tern relays mail for remote.test to a fake MX (aiosmtpd, test_api.FakeMX) on
127.0.0.1 that records when each message arrives. Arrival times are compared with send_at
(no assertion on how fast anything is); every wait is a bounded poll.

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import time

import pytest

from conftest import free_port, start_on_free_port
from test_api import Api, FakeMX, create_key, wait_ready_http

pytest.importorskip("aiosmtpd")  # python3-aiosmtpd, in scripts/install-deps


class TimedMX(FakeMX):
    """FakeMX that also notes the wall-clock time each message arrived."""

    def __init__(self):
        super().__init__()
        self.arrived = {}  # Subject -> time.time() at DATA

    def poll_subjects(self):
        for _, _, data in self.messages:
            for line in data.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    subj = line[9:].decode()
                    self.arrived.setdefault(subj, time.time())
                    break
        return self.arrived


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_send_at_holds_the_message_until_then_across_a_restart(tern_factory):
    """Two messages: one due in ~4 s and one in an hour. Both show as scheduled (API status,
    tern queue show), a flush sends neither early, tern restarts in between; the first reaches
    the MX no earlier than its send_at, the second stays scheduled with the same time."""
    mx = TimedMX()
    try:
        port = free_port()
        t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
                          "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}"}}},
                         start=False)
        key = create_key(t, "app")
        start_on_free_port(t)
        wait_ready_http(port)
        api = Api(t, port)

        def send(subject, at):
            st, body = api.json("POST", "/api/v1/messages",
                                {"from": "app@example.test", "to": ["bob@remote.test"],
                                 "subject": subject, "text": "later\n", "send_at": at}, key)
            assert st == 202, body
            return body["id"]

        soon_at = int(time.time()) + 4
        soon = send("soon", soon_at)
        late_at = int(time.time()) + 3600
        # RFC 3339 spelling of the same kind of time
        late = send("late", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(late_at)))

        st, s = api.json("GET", f"/api/v1/messages/{late}", token=key)
        assert st == 200 and s["send_at"] == late_at, s
        assert [r["state"] for r in s["recipients"]] == ["scheduled"], s
        shown = t.cli("queue", "show", late, check=True).stdout
        assert "(scheduled)" in shown and "state=scheduled" in shown, shown
        # an operator's flush does not override send_at
        t.cli("queue", "flush", check=True)

        # restart while both wait: the not-before times come back from the spool
        assert t.stop() == 0
        mx.poll_subjects()  # an arrival before the restart is timed as well
        t.start()
        wait_ready_http(port)

        wait_for(lambda: "soon" in mx.poll_subjects(), 60, "the scheduled message never came")
        assert mx.arrived["soon"] >= soon_at, (mx.arrived["soon"], soon_at)
        st, s = api.json("GET", f"/api/v1/messages/{soon}", token=key)
        assert st == 200, s
        wait_for(lambda: api.json("GET", f"/api/v1/messages/{soon}", token=key)[1]["finished"],
                 30, "the delivered message's status never finished")

        # the hour-ahead one: still queued, still scheduled, never at the MX
        assert "late" not in mx.poll_subjects()
        st, s = api.json("GET", f"/api/v1/messages/{late}", token=key)
        assert st == 200 and s["send_at"] == late_at, s
        assert [r["state"] for r in s["recipients"]] == ["scheduled"], s
        assert [r["attempts"] for r in s["recipients"]] == [0], s
        assert late in t.queue_list()
    finally:
        mx.stop()


def test_send_at_beyond_the_horizon_or_malformed_is_refused(tern_factory):
    """More than 72 hours ahead (or not a time) is a 422 with a stable code, and nothing is
    queued."""
    port = free_port()
    t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}},
                     start=False)
    key = create_key(t, "app")
    start_on_free_port(t)
    wait_ready_http(port)
    api = Api(t, port)
    for at, code in [(int(time.time()) + 73 * 3600, "send_at_too_far"),
                     ("2999-01-01T00:00:00Z", "send_at_too_far"),
                     ("next week", "invalid_field")]:
        st, body = api.json("POST", "/api/v1/messages",
                            {"from": "app@example.test", "to": ["bob@example.test"],
                             "text": "x", "send_at": at}, key)
        assert st == 422, body
        assert body["error"]["code"] == code and body["error"]["field"] == "send_at", body
    assert "bob@example.test" not in t.queue_list()


class DeferringMX:
    """aiosmtpd on 127.0.0.1 that answers 451 4.3.0 to every RCPT (a destination that is
    down for now), counting the attempts."""

    def __init__(self):
        from aiosmtpd.controller import Controller
        outer = self
        self.attempts = 0

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                outer.attempts += 1
                return "451 4.3.0 try again later"

        self.port = free_port()
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.ctl.start()

    def stop(self):
        self.ctl.stop()


def test_lifetime_of_a_scheduled_message_starts_at_send_at(tern_factory):
    """delivery.max_lifetime counts from send_at, not from the 202: a message scheduled past
    its lifetime (here 2 s, send_at 4 s ahead) whose first attempt is deferred stays deferred
    for a retry instead of bouncing at once as expired."""
    mx = DeferringMX()
    try:
        port = free_port()
        t = tern_factory({"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
                          "routes": {"remote.test": {"via": f"smtp://127.0.0.1:{mx.port}"}},
                          "delivery": {"max_lifetime": 2}},
                         start=False)
        key = create_key(t, "app")
        start_on_free_port(t)
        wait_ready_http(port)
        api = Api(t, port)
        st, body = api.json("POST", "/api/v1/messages",
                            {"from": "app@example.test", "to": ["bob@remote.test"],
                             "subject": "later", "text": "x\n",
                             "send_at": int(time.time()) + 4}, key)
        assert st == 202, body
        qid = body["id"]

        def tried():
            st, s = api.json("GET", f"/api/v1/messages/{qid}", token=key)
            assert st == 200, s
            return s["finished"] or s["recipients"][0]["attempts"] >= 1

        wait_for(tried, 60, "the scheduled message was never tried")
        st, s = api.json("GET", f"/api/v1/messages/{qid}", token=key)
        assert not s["finished"], s
        r = s["recipients"][0]
        assert r["state"] == "deferred" and "451" in r.get("reason", ""), s
        assert mx.attempts >= 1
    finally:
        mx.stop()
