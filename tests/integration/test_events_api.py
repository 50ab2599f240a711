"""
test_events_api.py — the event routes of the HTTP API in `tern serve` (issue 13 item 1):
a message sent through POST /api/v1/messages with tags and metadata gives received, queued and
delivered events; GET /api/v1/events finds them by type, recipient and tag, pages with a
cursor, shows a key its own events only (an admin key every one); /api/v1/webhooks and its
attempts are for admin keys.

Never: a timed assertion; every wait is bounded.
"""

import time

from test_api import api, send_ok  # noqa: F401  (the fixture and a helper, no tests)


def events(api, qs, key):
    st, body = api.json("GET", "/api/v1/events" + qs, token=api.keys[key])
    assert st == 200, body
    return body


def test_api_send_events_by_key_type_tag_and_cursor(api):
    ids = []
    for i in range(3):
        body = send_ok(api, {"from": "app@example.test", "to": ["alice@example.test"],
                             "subject": f"ev {i}", "text": "hello\n", "tags": ["receipt"],
                             "metadata": {"order": str(i)}})
        ids.append(body["id"])
    deadline = time.monotonic() + 30
    while True:
        got = events(api, "?type=delivered&tag=receipt&limit=1000", "send")["events"]
        if {e["queue_id"] for e in got} >= set(ids):
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    for e in got:
        assert e["key"] == "app" and e["tags"] == ["receipt"]
        assert e["recipient"] == "alice@example.test" and e["reply"]
    assert sorted(e["metadata"]["order"] for e in got if e["queue_id"] in ids) == ["0", "1", "2"]
    # every event of the first message, in order
    first = events(api, f"?queue_id={ids[0]}", "send")["events"]
    assert [e["type"] for e in first] == ["received", "queued", "delivered"]
    # by recipient (percent-encoded), and paged two at a time to the end
    seen, cursor = [], None
    for _ in range(20):
        qs = "?recipient=alice%40example.test&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = events(api, qs, "send")
        seen += page["events"]
        cursor = page["next_cursor"]
        if not page["more"]:
            break
    # queued and delivered name the recipient (received does not): six
    assert len(seen) == len({e["id"] for e in seen}) == 6
    # another key sees none of them; an admin key sees them all
    assert events(api, "?tag=receipt", "other")["events"] == []
    assert len(events(api, "?tag=receipt&type=delivered", "admin")["events"]) == 3
    # bad parameters: 400 with the API's error shape
    st, e = api.json("GET", "/api/v1/events?type=nope", token=api.keys["send"])
    assert st == 400 and e["error"]["code"] == "invalid_request"
    # a key is needed
    assert api.json("GET", "/api/v1/events")[0] == 401


def test_webhook_routes_are_for_admin_keys(api):
    t = api.t
    r = t.cli("webhook", "add", "http://127.0.0.1:1/h", "--events", "bounced", check=True)
    ep = int(r.stdout.split()[1])
    assert api.json("GET", "/api/v1/webhooks", token=api.keys["read"])[0] == 403
    st, body = api.json("GET", "/api/v1/webhooks", token=api.keys["admin"])
    assert st == 200
    w = [x for x in body["webhooks"] if x["id"] == ep]
    assert w and w[0]["events"] == "bounced" and "secret" not in w[0]
    assert "whsec_" not in str(body)
    st, body = api.json("GET", f"/api/v1/webhooks/{ep}/attempts", token=api.keys["admin"])
    assert st == 200 and body["attempts"] == []
    assert api.json("GET", "/api/v1/webhooks/999/attempts", token=api.keys["admin"])[0] == 404
