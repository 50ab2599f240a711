#!/usr/bin/python3
"""dsn_check.py — checks a DSN built by tern's dsn_build with Python's own
email package, an independent parser (test_bounce.c runs it on every DSN
it builds).

usage: dsn_check.py FILE [--rcpts N] [--part3 TYPE] [--envid ID | --envid-any]
                         [--subject TEXT] [--action A]... [--orcpt O]...

Checks the RFC 6522 / RFC 3464 structure: multipart/report with
report-type=delivery-status and exactly three parts; part 1 text/plain;
part 2 message/delivery-status with Reporting-MTA, one group per recipient
each with Final-Recipient, Action and a valid Status; part 3
message/rfc822 or text/rfc822-headers. Options add expectations. Exits 0
when all hold, 1 (with the reasons on stderr) otherwise.
"""
import argparse
import email
import email.policy
import re
import sys

ACTIONS = {"failed", "delayed", "delivered", "relayed", "expanded"}
STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--rcpts", type=int)
    ap.add_argument("--part3")
    ap.add_argument("--envid")
    ap.add_argument("--envid-any", action="store_true")
    ap.add_argument("--subject")
    ap.add_argument("--action", action="append", default=[])
    ap.add_argument("--orcpt", action="append", default=[])
    a = ap.parse_args()

    with open(a.file, "rb") as f:
        raw = f.read()
    errors = []

    def check(cond, what):
        if not cond:
            errors.append(what)
        return cond

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    check(not msg.defects, "top-level defects: %r" % msg.defects)
    check(msg.is_multipart(), "not multipart")
    check(msg.get_content_type() == "multipart/report",
          "content type %s" % msg.get_content_type())
    check(msg.get_param("report-type") == "delivery-status",
          "report-type %r" % msg.get_param("report-type"))
    check(msg["Auto-Submitted"] == "auto-replied", "Auto-Submitted missing")
    check(msg["MIME-Version"] == "1.0", "MIME-Version missing")
    check("MAILER-DAEMON@" in str(msg["From"]), "From is not MAILER-DAEMON")
    check(msg["Date"] is not None and msg["Date"].datetime is not None, "Date unparseable")
    check(msg["Message-ID"] is not None, "Message-ID missing")
    if a.subject is not None:
        check(msg["Subject"] == a.subject, "subject %r" % msg["Subject"])
    if not msg.is_multipart():
        return report(errors)

    parts = msg.get_payload()
    if not check(len(parts) == 3, "%d parts, want 3" % len(parts)):
        return report(errors)
    for i, p in enumerate(parts):
        check(not p.defects, "part %d defects: %r" % (i + 1, p.defects))

    human, status, orig = parts
    check(human.get_content_type() == "text/plain", "part 1 is %s" % human.get_content_type())
    check(human.get_content_charset() == "us-ascii", "part 1 charset")

    check(status.get_content_type() == "message/delivery-status",
          "part 2 is %s" % status.get_content_type())
    groups = status.get_payload()
    check(isinstance(groups, list) and len(groups) >= 2,
          "part 2 has %r field groups" % (len(groups) if isinstance(groups, list) else groups))
    if isinstance(groups, list) and groups:
        per_msg, per_rcpt = groups[0], groups[1:]
        rm = per_msg["Reporting-MTA"]
        check(rm is not None and ";" in rm, "Reporting-MTA %r" % rm)
        check(per_msg["Final-Recipient"] is None, "Final-Recipient in per-message group")
        if a.envid_any:
            check(per_msg["Original-Envelope-Id"] is not None, "Original-Envelope-Id missing")
        elif a.envid is not None:
            check(per_msg["Original-Envelope-Id"] == a.envid,
                  "Original-Envelope-Id %r" % per_msg["Original-Envelope-Id"])
        else:
            check(per_msg["Original-Envelope-Id"] is None, "unexpected Original-Envelope-Id")
        if a.rcpts is not None:
            check(len(per_rcpt) == a.rcpts, "%d recipient groups, want %d" % (len(per_rcpt), a.rcpts))
        for i, g in enumerate(per_rcpt):
            fr = g["Final-Recipient"]
            check(fr is not None and re.match(r"^[\w.-]+; ?\S", fr) is not None,
                  "group %d Final-Recipient %r" % (i, fr))
            act = g["Action"]
            check(act in ACTIONS, "group %d Action %r" % (i, act))
            st = g["Status"]
            check(st is not None and STATUS_RE.match(st) is not None, "group %d Status %r" % (i, st))
            if i < len(a.action):
                check(act == a.action[i], "group %d Action %r want %r" % (i, act, a.action[i]))
            if i < len(a.orcpt):
                want = a.orcpt[i] or None
                check(g["Original-Recipient"] == want,
                      "group %d Original-Recipient %r want %r" % (i, g["Original-Recipient"], want))
            dc = g["Diagnostic-Code"]
            if dc is not None:
                check("\r" not in dc and "\n" not in dc, "group %d Diagnostic-Code has a line break" % i)
            for k in g.keys():
                check(re.match(r"^[A-Za-z][A-Za-z0-9-]*$", k) is not None,
                      "group %d odd field name %r" % (i, k))

    t3 = orig.get_content_type()
    check(t3 in ("message/rfc822", "text/rfc822-headers"), "part 3 is %s" % t3)
    if a.part3 is not None:
        check(t3 == a.part3, "part 3 is %s, want %s" % (t3, a.part3))
    if t3 == "message/rfc822":
        inner = orig.get_payload()
        check(isinstance(inner, list) and len(inner) == 1, "message/rfc822 payload")
    return report(errors)


def report(errors):
    for e in errors:
        print("dsn_check: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
