"""
test_quotas.py — sending quotas (issue 12 item 6, the quota part; item 9 "quotas hit and
reset"): per API key (`tern apikey create --per-second/--per-hour/--per-day`) and per sending
domain (`quotas { "DOMAIN" { ... } }`), refused over HTTP with 429, Retry-After and a JSON
`quota_exceeded` error naming the window; nothing of a refused message is queued; counts
survive a restart; a per-second window admits again once the second has passed.

Windows are fixed UTC windows: a test that counts within an hour or a day redoes its count
once if the window turned while it ran (a bounded retry, not a sleep).

Never: talks to anything but 127.0.0.1, waits without a bound, or kills a process it did
not start.
"""

import json
import re
import time

import pytest

from conftest import free_port, start_on_free_port
from test_api import Api, create_key, wait_ready_http


def serve(tern_factory, extra=None, keys=()):
    port = free_port()
    cfg = {"listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}}}
    cfg.update(extra or {})
    t = tern_factory(cfg, start=False)
    toks = {name: create_key(t, name, *args) for name, args in keys}
    start_on_free_port(t)
    wait_ready_http(port)
    a = Api(t, port)
    a.keys = toks
    return a


def msg(subject, frm="shop@example.test"):
    return {"from": frm, "to": ["alice@example.test"], "subject": subject, "text": "hi\n"}


def send(api, key, subject, frm="shop@example.test"):
    return api.call("POST", "/api/v1/messages", msg(subject, frm), api.keys[key])


def hour_now():
    return int(time.time()) // 3600


def test_key_per_hour_quota_refuses_the_fourth_with_429(tern_factory):
    for attempt in range(2):
        api = serve(tern_factory, keys=[(f"app{attempt}", ["--per-hour", "3"]),
                                        (f"free{attempt}", [])])
        key = f"app{attempt}"
        h = hour_now()
        codes = [send(api, key, f"quota-{attempt}-{i}")[0] for i in range(3)]
        st, hd, body = send(api, key, f"quota-{attempt}-over")
        if hour_now() != h:
            continue  # the hour turned while counting: count again, once
        assert codes == [202, 202, 202]
        assert st == 429, body
        ra = hd.get("Retry-After")
        assert ra and ra.isdigit() and 1 <= int(ra) <= 3600
        err = json.loads(body)["error"]
        assert err["code"] == "quota_exceeded" and err["window"] == "hour"
        assert err["limit"] == 3 and err["retry_after"] == int(ra)
        assert "3 messages per hour" in err["message"] and key in err["message"]
        # nothing queued for it: a later message of another key arrives, the refused never
        assert send(api, f"free{attempt}", f"marker-{attempt}")[0] == 202
        api.t.wait_mail_with("alice@example.test", f"marker-{attempt}")
        api.t.wait_mail_with("alice@example.test", f"quota-{attempt}-", count=3)
        got = b"".join(p.read_bytes() for p in api.t.mail_files("alice@example.test"))
        assert f"quota-{attempt}-over".encode() not in got
        assert re.search(r"event=api method=POST path=/api/v1/messages status=429 key=%s "
                         r"\S+ id=-" % key, api.t.log())
        # tern apikey list shows the usage against the limit (written behind: poll, bounded)
        deadline = time.monotonic() + 10
        while True:
            lst = api.t.cli("apikey", "list", check=True).stdout
            if re.search(r"\b%s\s+send\s+live\s+3/3\b" % key, lst):
                break
            assert time.monotonic() < deadline, lst
            time.sleep(0.2)
        return
    pytest.fail("the UTC hour turned twice during a few sends")


def test_batch_crossing_the_limit_gets_per_message_results(tern_factory):
    for attempt in range(2):
        api = serve(tern_factory, keys=[(f"batch{attempt}", ["--per-hour", "2"])])
        h = hour_now()
        st, body = api.json("POST", "/api/v1/messages/batch",
                            {"messages": [msg(f"b{attempt}-{i}") for i in range(4)]},
                            api.keys[f"batch{attempt}"])
        if hour_now() != h:
            continue
        assert st == 200, body
        assert body["accepted"] == 2 and body["rejected"] == 2
        r = body["results"]
        assert [x["http_status"] for x in r] == [202, 202, 429, 429]
        assert all(x["error"]["code"] == "quota_exceeded" for x in r[2:])
        assert all(x["error"]["window"] == "hour" for x in r[2:])
        return
    pytest.fail("the UTC hour turned twice during one batch")


def test_domain_quota_applies_across_keys(tern_factory):
    for attempt in range(2):
        api = serve(tern_factory, extra={"quotas": {"example.test": {"per_hour": 2}}},
                    keys=[(f"one{attempt}", []), (f"two{attempt}", [])])
        h = hour_now()
        a = send(api, f"one{attempt}", "d1")[0]
        b = send(api, f"two{attempt}", "d2")[0]
        st, hd, body = send(api, f"one{attempt}", "d3")
        st2, _, _ = send(api, f"two{attempt}", "d4")
        # another domain is not counted against example.test
        other = send(api, f"two{attempt}", "d5", frm="news@other.test")[0]
        if hour_now() != h:
            continue
        assert (a, b, st, st2, other) == (202, 202, 429, 429, 202), body
        assert b"domain 'example.test' may send 2 messages per hour" in body
        assert hd.get("Retry-After", "").isdigit()
        return
    pytest.fail("the UTC hour turned twice during a few sends")


def test_day_count_survives_a_restart(tern_factory):
    for attempt in range(2):
        api = serve(tern_factory, keys=[(f"daily{attempt}", ["--per-day", "2"])])
        d = int(time.time()) // 86400
        codes = [send(api, f"daily{attempt}", f"r{i}")[0] for i in range(2)]
        api.t.stop()
        start_on_free_port(api.t)
        wait_ready_http(api.port)
        st, hd, body = send(api, f"daily{attempt}", "r-after")
        if int(time.time()) // 86400 != d:
            continue
        assert codes == [202, 202]
        assert st == 429 and b'"window":"day"' in body, body
        return
    pytest.fail("the UTC day turned twice")


def test_per_second_quota_admits_again_in_the_next_second(tern_factory):
    api = serve(tern_factory, keys=[("burst", ["--per-second", "1"])])
    refused = None
    for i in range(50):  # one per second: a quick second try is refused
        st, hd, body = send(api, "burst", f"s{i}")
        if st == 429:
            refused = (hd, body)
            break
        assert st == 202, body
    assert refused, "50 sends in a row were all admitted under a per-second quota of 1"
    hd, body = refused
    assert hd.get("Retry-After") == "1" and b'"window":"second"' in body
    deadline = time.monotonic() + 10
    while True:  # reset: bounded polling until admitted again
        st, _, body = send(api, "burst", "again")
        if st == 202:
            break
        assert st == 429, body
        assert time.monotonic() < deadline, "never admitted again"
        time.sleep(0.1)


def test_apikey_create_rejects_bad_quota_values(tern_factory):
    t = tern_factory(start=False)
    for bad in ("0", "-1", "x", "10000000000"):
        r = t.cli("apikey", "create", "k", "--per-hour", bad)
        assert r.returncode != 0 and "--per-hour takes a number" in r.stderr
    r = t.cli("apikey", "list", check=True)
    assert " k " not in r.stdout


def test_apikey_limits_changes_a_running_keys_quota(tern_factory):
    """`tern apikey limits` changes the windows it is given, keeps the others, and the
    running server applies the new limit at the key's next request."""
    api = serve(tern_factory, keys=[("app", ["--per-hour", "100", "--per-day", "2"])])
    assert [send(api, "app", f"lim-{i}")[0] for i in range(2)] == [202, 202]
    st, _, body = send(api, "app", "lim-over")
    assert st == 429 and json.loads(body)["error"]["window"] == "day", body
    r = api.t.cli("apikey", "limits", "app", "--per-day", "5", check=True)
    assert re.fullmatch(r"\S{16} app per_second=none per_hour=100 per_day=5\n", r.stdout), r.stdout
    assert send(api, "app", "lim-3")[0] == 202
    # by id too; 0 removes a limit
    kid = r.stdout.split()[0]
    r = api.t.cli("apikey", "limits", kid, "--per-day", "0", "--per-second", "50", check=True)
    assert r.stdout.split()[1:] == ["app", "per_second=50", "per_hour=100", "per_day=none"]
    assert [send(api, "app", f"lim-more-{i}")[0] for i in range(3)] == [202, 202, 202]
    # no flag: changes nothing, prints the limits
    assert api.t.cli("apikey", "limits", "app", check=True).stdout == r.stdout
    # errors: an unknown or revoked key, a bad value, a missing name
    r = api.t.cli("apikey", "limits", "nosuch", "--per-day", "1")
    assert r.returncode == 1 and "no live key" in r.stderr
    for bad in ("-1", "x", "10000000000"):
        r = api.t.cli("apikey", "limits", "app", "--per-hour", bad)
        assert r.returncode != 0 and "--per-hour takes a number from 0" in r.stderr
    assert api.t.cli("apikey", "limits").returncode != 0
    api.t.cli("apikey", "revoke", "app", check=True)
    assert api.t.cli("apikey", "limits", "app", "--per-day", "1").returncode == 1


def test_submission_user_over_its_quota_gets_452_4_7_1(tern_factory):
    from test_submission import ALICE, BOB, send, sub_client, submission
    for attempt in range(2):
        t = submission(tern_factory, None, {
            "auth": {"allow_plaintext": True},
            "submission_quotas": {"default": {"per_hour": 2},
                                  BOB: {"per_hour": 5}},
        }, tls=False)
        h = hour_now()
        c = sub_client(t, tls=False, login=(ALICE,))
        send(c, ALICE, [BOB], f"sub-{attempt}-0")
        send(c, ALICE, [BOB], f"sub-{attempt}-1")
        r = c.cmd(f"MAIL FROM:<{ALICE}>")
        # bob has an entry of his own: his third message goes
        b = sub_client(t, tls=False, login=(BOB,))
        for i in range(3):
            send(b, BOB, [ALICE], f"bob-{attempt}-{i}")
        if hour_now() != h:
            continue
        assert r.is_(452, "4.7.1"), r
        text = " ".join(r.texts)
        assert ALICE in text and "2 per hour" in text and "try again in" in text, text
        assert t.log_lines("event=rejected", "code=452 reason=quota"), t.log_tail()
        # the session goes on: RSET and QUIT are answered, nothing was queued for the refused
        assert c.cmd("RSET").is_(250)
        t.wait_mail_with(BOB, f"sub-{attempt}-", count=2)
        return
    pytest.fail("the UTC hour turned twice during a few sends")


def test_quota_config_is_checked_and_printed(tern_factory):
    t = tern_factory({"quotas": {"Example.ORG": {"per_second": 3, "per_day": 100}},
                      "submission_quotas": {"default": {"per_hour": 20}}}, start=False)
    out = t.cli("check-config", check=True).stdout
    assert re.search(r'"example\.org" \{ per_second = 3; per_day = 100; \}', out), out
    assert re.search(r'"default" \{ per_hour = 20; \}', out), out
    for bad, words in (({"quotas": {"not a domain": {"per_hour": 1}}}, "not a valid domain"),
                       ({"quotas": {"example.org": {"per_week": 1}}}, "per_week"),
                       ({"quotas": {"example.org": {"per_hour": 0}}}, "per_hour")):
        cfg = dict(t.config)
        cfg.update(bad)
        t.write_config(cfg)
        r = t.cli("check-config")
        assert r.returncode != 0 and words in (r.stderr + r.stdout), (bad, r.stderr)


def test_api_tag_and_key_choose_the_ip_pool(tern_factory):
    """API mail: its first tag becomes X-Tern-Tag (pool_select.tags: bulk, 127.0.0.3), a
    key named in pool_select.keys leaves from its pool (dedicated, 127.0.0.4) whatever
    the domain rule says; the fake MX sees those source addresses and no X-Tern-Tag."""
    from test_shaping import MX_IP, FakeMX
    with FakeMX(MX_IP, slow=0) as mx:
        port = free_port()
        t = tern_factory({
            "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
            "routes": mx.route("pool.test"),
            "pools": {"transactional": {"addresses": ["127.0.0.2"]},
                      "bulk": {"addresses": ["127.0.0.3"]},
                      "dedicated": {"addresses": ["127.0.0.4"]}},
            "pool_select": {"domains": {"example.test": "transactional"},
                            "tags": {"newsletter": "bulk"},
                            "keys": {"vip": "dedicated"}},
        }, start=False)
        toks = {"app": create_key(t, "app"), "vip": create_key(t, "vip")}
        start_on_free_port(t)
        wait_ready_http(port)
        api = Api(t, port)
        api.keys = toks

        def post(key, to, tags=None):
            m = {"from": "shop@example.test", "to": [to], "subject": to, "text": "x\n"}
            if tags:
                m["tags"] = tags
            st, body = api.json("POST", "/api/v1/messages", m, toks[key])
            assert st == 202, body

        post("app", "plain@pool.test")
        post("app", "news@pool.test", ["newsletter", "spring"])
        post("vip", "vip@pool.test")
        mx.wait_messages(3, t)
        with mx.lock:
            by_rcpt = {m[1][0]: m for m in mx.messages}
        assert by_rcpt["plain@pool.test"][0] == "127.0.0.2", by_rcpt
        assert by_rcpt["news@pool.test"][0] == "127.0.0.3", by_rcpt
        assert by_rcpt["vip@pool.test"][0] == "127.0.0.4", by_rcpt
        assert all(b"X-Tern-Tag" not in m[2] for m in by_rcpt.values())


def test_domain_quota_is_shared_by_api_and_submission(tern_factory):
    from test_submission import ALICE, BOB, send, sub_client, submission
    for attempt in range(2):
        port = free_port()
        t = submission(tern_factory, None, {
            "auth": {"allow_plaintext": True},
            "listen": {"api": {"address": f"127.0.0.1:{port}", "profile": "http"}},
            "quotas": {"example.test": {"per_hour": 2}},
        }, start=False, tls=False)
        tok = create_key(t, f"k{attempt}")
        start_on_free_port(t)
        wait_ready_http(port)
        api = Api(t, port)
        api.keys = {"k": tok}
        h = hour_now()
        st = api.call("POST", "/api/v1/messages", msg("shared-api", frm=ALICE), tok)[0]
        c = sub_client(t, tls=False, login=(ALICE,))
        send(c, ALICE, [BOB], f"shared-sub-{attempt}")
        r = c.cmd(f"MAIL FROM:<{ALICE}>")
        st3 = api.call("POST", "/api/v1/messages", msg("shared-api-3", frm=ALICE), tok)[0]
        if hour_now() != h:
            continue
        assert st == 202
        assert r.is_(452, "4.7.1") and "domain example.test" in " ".join(r.texts), r
        assert st3 == 429
        return
    pytest.fail("the UTC hour turned twice during a few sends")
