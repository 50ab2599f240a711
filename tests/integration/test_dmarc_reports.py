"""
test_dmarc_reports.py — DMARC aggregate reports (RFC 9990; dmarc { reports { } } in
docs/config.md): what tern sends about the mail it received, and what it reads from the
reports it receives.

Sending: a real unbound (remote_harness.Unbound) serves policy records with rua; mail
comes from 127.0.0.1 (a stranger, so it is checked); `tern dmarc send-reports` runs a
round in the daemon; every rua is a local mailbox, so the reports are caught in Maildirs,
then taken apart with Python's email, gzip and xml.etree.

Receiving: reports as real reporters sent them (tests/data/dmarc-reports: Google's zip,
gzip ones, Microsoft's; see its SOURCE.md), plus gzip and zip attachments made here, go to
dmarc.reports.inbox; `tern dmarc report --json` must show their rows; a report that
cannot be read is still delivered, and logged.

Never: wait without a bound, assert on elapsed time, or talk outside 127.0.0.0/8.
"""

import email
import email.policy
import gzip
import io
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from conftest import Raw, expect
from remote_harness import DNS_RECORDS, Unbound

HOST = "mx.example.test"  # conftest's hostname: the Submitter
HELO = "client.helo.test"
RCPT = "alice@example.test"
INBOX = "dmarc@example.test"
FROM = "dmarc-noreply@example.test"
NS = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
DATA = Path(os.environ.get("TERN_TESTDATA", Path(__file__).resolve().parents[1] / "data"))
SAMPLES = DATA / "dmarc-reports"

SPF_OK = '"v=spf1 ip4:127.0.0.0/8 -all"'
TXT = [
    (HELO, SPF_OK),
    # rua inside the policy domain: no verification needed
    ("rep.test", SPF_OK),
    ("_dmarc.rep.test", '"v=DMARC1; p=quarantine; adkim=s; rua=mailto:agg@rep.test"'),
    # rua in another organizational domain, authorized by it
    ("ext-ok.test", SPF_OK),
    ("_dmarc.ext-ok.test", f'"v=DMARC1; p=none; rua=mailto:{INBOX}"'),
    ("ext-ok.test._report._dmarc.example.test", '"v=DMARC1"'),
    # rua in another organizational domain that never agreed to get reports
    ("ext-no.test", SPF_OK),
    ("_dmarc.ext-no.test", f'"v=DMARC1; p=none; rua=mailto:{INBOX}"'),
    # the authorizing record redirects: on its own host (followed), to another (refused)
    ("redir.test", SPF_OK),
    ("_dmarc.redir.test", f'"v=DMARC1; p=none; rua=mailto:{INBOX}"'),
    ("redir.test._report._dmarc.example.test", f'"v=DMARC1; rua=mailto:{RCPT}"'),
    ("evil.test", SPF_OK),
    ("_dmarc.evil.test", f'"v=DMARC1; p=none; rua=mailto:{INBOX}"'),
    ("evil.test._report._dmarc.example.test", '"v=DMARC1; rua=mailto:x@elsewhere.test"'),
    # two rua: one takes reports of at most 1 KiB (a report is larger), one any size
    ("small.test", SPF_OK),
    ("_dmarc.small.test", '"v=DMARC1; p=none; rua=mailto:tiny@small.test!1k,'
                          'mailto:agg@small.test"'),
]


@pytest.fixture(scope="module")
def zone():
    u = Unbound(records=DNS_RECORDS)
    with open(u.conf, "a") as f:
        for name, data in TXT:
            f.write(f"  local-data: '{name}. 60 IN TXT {data}'\n")
    u.start()
    yield u
    u.stop()


def reports_config(forward=None, checks=True):
    cfg = {
        "local_domains": ["example.test", "localhost", "rep.test", "small.test"],
        "dmarc": {"reports": {"from": FROM, "org_name": "Tern Test", "inbox": INBOX}},
    }
    if checks:
        cfg["dns"] = {"forward": [forward]}
        cfg["auth_checks"] = {"spf": True, "dkim": False, "dmarc": "mark"}
    return cfg


USERS = (RCPT, "agg@rep.test", INBOX, "tiny@small.test", "agg@small.test")


def send(t, sender, frm, subject, rcpt=RCPT, body=None):
    msg = body or (f"From: <{frm}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\n"
                   f"Hello.\r\n").encode()
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    with t.client() as c:
        expect(c.greeting, 220)
        expect(c.cmd(f"EHLO {HELO}"), 250)
        expect(c.cmd(f"MAIL FROM:<{sender}>"), 250)
        expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        expect(c.reply(), 250)
        expect(c.cmd("QUIT"), 221)


def take_apart(data):
    """A delivered report -> (message, attachment filename, parsed XML root)."""
    m = email.message_from_bytes(data, policy=email.policy.default)
    [part] = [p for p in m.walk() if p.get_content_type() == "application/gzip"]
    xml = gzip.decompress(part.get_payload(decode=True))
    return m, part.get_filename(), ET.fromstring(xml)


def text(el, path):
    found = el.find(path, NS)
    assert found is not None, f"no {path} in {ET.tostring(el)[:400]!r}"
    return found.text


def records(root):
    out = []
    for r in root.findall("d:record", NS):
        out.append({
            "ip": text(r, "d:row/d:source_ip"),
            "count": int(text(r, "d:row/d:count")),
            "disposition": text(r, "d:row/d:policy_evaluated/d:disposition"),
            "dkim": text(r, "d:row/d:policy_evaluated/d:dkim"),
            "spf": text(r, "d:row/d:policy_evaluated/d:spf"),
            "header_from": text(r, "d:identifiers/d:header_from"),
            "envelope_from": text(r, "d:identifiers/d:envelope_from"),
            "spf_result": text(r, "d:auth_results/d:spf/d:result"),
            "spf_domain": text(r, "d:auth_results/d:spf/d:domain"),
        })
    return sorted(out, key=lambda x: -x["count"])


def test_reports_sent_per_rua_with_external_verification(tern_factory, zone):
    t = tern_factory(reports_config(zone.forward), users=USERS)
    # rep.test: two aligned passes, one failure (SPF for other.test, not aligned)
    send(t, "a@rep.test", "news@rep.test", "pass one")
    send(t, "b@rep.test", "news@rep.test", "pass two")
    send(t, "x@other.test", "news@rep.test", "spoofed")
    send(t, "a@ext-ok.test", "news@ext-ok.test", "ext ok")
    send(t, "a@ext-no.test", "news@ext-no.test", "ext no")
    t.wait_mail(RCPT, count=5)

    r = t.cli("dmarc", "send-reports", "--now")
    assert r.returncode == 0, r.stderr + t.log_tail()
    assert "3 domains, 2 sent, 1 skipped, 0 failed" in r.stdout, r.stdout

    # rep.test's report, at its own rua
    [(_, data)] = t.wait_mail("agg@rep.test")
    assert data.startswith(f"Return-Path: <{FROM}>".encode())
    m, fname, root = take_apart(data)
    subj = " ".join(str(m["Subject"]).split())
    rid = text(root, "d:report_metadata/d:report_id")
    assert subj == f"Report Domain: rep.test Submitter: {HOST} Report-ID: <{rid}>"
    begin = int(text(root, "d:report_metadata/d:date_range/d:begin"))
    end = int(text(root, "d:report_metadata/d:date_range/d:end"))
    assert begin <= end
    assert re.fullmatch(rf"{re.escape(HOST)}!rep\.test!{begin}!{end}![a-z0-9]+\.xml\.gz",
                        fname), fname
    assert m["From"] == FROM and m["To"] == "agg@rep.test"
    assert text(root, "d:version") == "1.0"
    assert text(root, "d:report_metadata/d:org_name") == "Tern Test"
    assert text(root, "d:report_metadata/d:email") == FROM
    assert text(root, "d:policy_published/d:domain") == "rep.test"
    assert text(root, "d:policy_published/d:p") == "quarantine"
    assert text(root, "d:policy_published/d:adkim") == "s"
    assert text(root, "d:policy_published/d:aspf") == "r"
    assert text(root, "d:policy_published/d:testing") == "n"
    assert records(root) == [
        {"ip": "127.0.0.1", "count": 2, "disposition": "pass", "dkim": "fail", "spf": "pass",
         "header_from": "rep.test", "envelope_from": "rep.test", "spf_result": "pass",
         "spf_domain": "rep.test"},
        {"ip": "127.0.0.1", "count": 1, "disposition": "none", "dkim": "fail", "spf": "fail",
         "header_from": "rep.test", "envelope_from": "other.test", "spf_result": "none",
         "spf_domain": "other.test"},
    ]

    # the external rua that authorized it got ext-ok.test's report; ext-no.test's was not sent
    found = t.wait_mail_with(INBOX, "Report Domain: ext-ok.test")
    assert len(found) == 1
    _, _, root2 = take_apart(found[0][1])
    assert text(root2, "d:policy_published/d:domain") == "ext-ok.test"
    assert [x["count"] for x in records(root2)] == [1]
    assert not [p for p in t.mail_files(INBOX) if b"ext-no.test" in p.read_bytes()]
    assert t.log_lines("event=dmarc_report_skipped", "domain=ext-no.test",
                       "reason=external-destination-not-authorized")
    assert len(t.log_lines("event=dmarc_report_sent")) == 2

    # the inbox read our own report back: it is in `tern dmarc report`
    t.wait_log(r"event=dmarc_report_received .*domain=ext-ok\.test")
    rows = json.loads(t.cli("dmarc", "report", "--json", check=True).stdout)
    assert [(x["policy_domain"], x["reporter"], x["source_ip"], x["count"], x["spf"])
            for x in rows] == [("ext-ok.test", "Tern Test", "127.0.0.1", 1, "pass")]

    # what was reported is gone: the next round has nothing
    r = t.cli("dmarc", "send-reports", check=True)
    assert "0 domains, 0 sent" in r.stdout, r.stdout
    t.check_sanitizers()


def test_send_reports_needs_reporting_on(tern_factory):
    t = tern_factory()
    r = t.cli("dmarc", "send-reports")
    assert r.returncode == 1 and "dmarc.reports.from" in r.stderr


def crlf(b):
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def report_mail(subject, ctype, fname, payload):
    """A report message as a reporter sends one, the attachment base64."""
    m = email.message.EmailMessage()
    m["From"] = "reports@reporter.example"
    m["To"] = INBOX
    m["Subject"] = subject
    m["Message-ID"] = f"<{subject.replace(' ', '-')}@reporter.example>"
    m.set_content("An aggregate report.\n")
    maintype, subtype = ctype.split("/")
    m.add_attachment(payload, maintype=maintype, subtype=subtype, filename=fname)
    return crlf(m.as_bytes(policy=email.policy.SMTP))


def facts(num):
    j = json.loads((SAMPLES / f"{num}.json").read_text())
    md = j["report_metadata"]
    return {(md["org_name"], md["report_id"], j["policy_published"]["domain"],
             r["row"]["source_ip"], r["row"]["count"]) for r in j["record"]}


def test_received_reports_are_stored_and_shown(tern_factory):
    t = tern_factory(reports_config(checks=False), users=USERS)
    # real reporters' messages (Google's zip, gzip, Microsoft's)
    for num in ("100", "101", "103"):
        send(t, "reports@reporter.example", "reports@reporter.example", num, rcpt=INBOX,
             body=crlf((SAMPLES / f"{num}.eml").read_bytes()))
    # made here: a gzip and a zip attachment of two other reporters' XML
    xml3 = (SAMPLES / "003.xml").read_bytes()
    send(t, "r@reporter.example", "r@reporter.example", "gz", rcpt=INBOX,
         body=report_mail("gz", "application/gzip", "r!stalw.art!1!2.xml.gz",
                          gzip.compress(xml3)))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.xml", (SAMPLES / "001.xml").read_bytes())
    send(t, "r@reporter.example", "r@reporter.example", "zip", rcpt=INBOX,
         body=report_mail("zip", "application/zip", "r!example.com!1!2.zip", zbuf.getvalue()))
    # not a report: delivered all the same, logged
    send(t, "r@reporter.example", "r@reporter.example", "broken", rcpt=INBOX,
         body=report_mail("broken", "application/gzip", "x.xml.gz", b"\x1f\x8b not gzip"))
    t.wait_mail(INBOX, count=6)
    t.wait_log(r"event=dmarc_report_unparsable .*reason=cannot-decode-attachment")
    want = set()
    for num in ("100", "101", "103", "003", "001"):
        want |= facts(num)
    # every report's rows, each report stored once
    import time
    deadline = time.monotonic() + 10
    while True:
        rows = json.loads(t.cli("dmarc", "report", "--json", check=True).stdout)
        got = {(x["reporter"], x["report_id"], x["policy_domain"], x["source_ip"], x["count"])
               for x in rows}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == want, t.log_tail()
    assert len(rows) == len(want)
    assert len(t.log_lines("event=dmarc_report_received")) == 5

    # filters and the table
    only = json.loads(t.cli("dmarc", "report", "--json", "--domain", "stalw.art",
                            check=True).stdout)
    assert only and all(x["policy_domain"] == "stalw.art" for x in only)
    assert len(only) < len(rows)
    late = json.loads(t.cli("dmarc", "report", "--json", "--since", "2022-11-27",
                            check=True).stdout)
    assert late and all(x["end"] >= 1669507200 for x in late) and len(late) < len(rows)
    table = t.cli("dmarc", "report", check=True).stdout
    assert table.splitlines()[0].split()[:3] == ["SOURCE", "IP", "COUNT"]
    assert "google.com" in table and "Fastmail Pty Ltd" in table
    bad = t.cli("dmarc", "report", "--since", "yesterday")
    assert bad.returncode == 2
    t.check_sanitizers()


def test_recording_failure_never_delays_mail(tern_factory, zone):
    """DATA/dmarc.db cannot be opened (a directory stands there): the evaluation is not
    recorded, the failure is logged, and the mail is delivered as ever."""
    t = tern_factory(reports_config(zone.forward), users=USERS, start=False)
    (t.data_dir / "dmarc.db").mkdir()
    t.start()
    send(t, "a@rep.test", "news@rep.test", "still delivered")
    t.wait_mail_with(RCPT, "Subject: still delivered")
    t.wait_log(r"event=dmarc_store_failed ")
    t.check_sanitizers()


def test_config_checked_and_printed(tern_factory, tmp_path):
    t = tern_factory({"dmarc": {"reports": {"from": FROM, "inbox": "dmarc@elsewhere.example",
                                            "org_name": 'Org "Q"', "interval": Raw("6h")}}},
                     start=False)
    r = t.cli("check-config")
    assert r.returncode == 0, r.stderr
    assert "warning: dmarc.reports.inbox: not in local_domains" in r.stderr
    # auth_checks.dmarc is off in the base test config: nothing would be reported
    assert "warning: dmarc.reports.from: auth_checks.dmarc is off" in r.stderr
    assert 'org_name = "Org \\"Q\\"";' in r.stdout and "interval = 21600s;" in r.stdout
    # nothing received yet: an empty answer, and no database made by the command
    assert t.cli("dmarc", "report", "--json", check=True).stdout.strip() == "[]"
    assert not (t.data_dir / "dmarc.db").exists()
    t.write_config(dict(t.config, dmarc={"reports": {"from": "not an address"}}))
    r = t.cli("check-config")
    assert r.returncode != 0 and "dmarc.reports.from: must be a mailbox" in r.stderr


def test_send_reports_while_the_server_is_down(tern_factory, zone):
    """Without a running server the same round runs in the command; the reports wait in
    the maildrop and leave when the server starts."""
    t = tern_factory(reports_config(zone.forward), users=USERS)
    send(t, "a@rep.test", "news@rep.test", "pass one")
    t.wait_mail(RCPT)
    t.stop()
    r = t.cli("dmarc", "send-reports")
    assert r.returncode == 0, r.stderr
    assert "1 domain, 1 sent, 0 skipped, 0 failed" in r.stdout and "maildrop" in r.stdout
    assert not t.mail_files("agg@rep.test")
    t.start()
    [(_, data)] = t.wait_mail("agg@rep.test")
    assert data.startswith(f"Return-Path: <{FROM}>".encode())
    _, fname, root = take_apart(data)
    assert fname.startswith(f"{HOST}!rep.test!")
    assert text(root, "d:policy_published/d:domain") == "rep.test"
    assert [x["count"] for x in records(root)] == [1]
    # the daemon still records (the command left it its database)
    send(t, "b@rep.test", "news@rep.test", "pass two")
    t.wait_mail(RCPT, count=2)
    r = t.cli("dmarc", "send-reports", check=True)
    assert "1 domain, 1 sent" in r.stdout, r.stdout + t.log_tail()
    t.check_sanitizers()


def test_dkim_testing_key_does_not_pass_dmarc(tern_factory, tmp_path):
    """RFC 6376 §3.6.1: a signature verified with a key published with t=y is reported
    (dkim=pass) but counts for nothing in DMARC: with SPF failing, p=reject refuses the
    message. The same signature by a key without t=y passes."""
    import subprocess

    import dkim

    from conftest import CLI_TIMEOUT, tern_bin

    r = subprocess.run([tern_bin(), "dkim", "keygen", "trial.test", "s1", "--type", "rsa"],
                       capture_output=True, timeout=CLI_TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    record = "".join(re.findall(r'"([^"]*)"', r.stdout.decode()))
    key = (tmp_path / "trial.test.s1.key").read_bytes()

    def chunks(s):
        return " ".join(f'"{s[i:i + 255]}"' for i in range(0, len(s), 255))

    u = Unbound(records=DNS_RECORDS)
    with open(u.conf, "a") as f:
        for name, data in [(HELO, SPF_OK),
                           ("trial.test", '"v=spf1 ip4:192.0.2.0/24 -all"'),
                           ("_dmarc.trial.test", '"v=DMARC1; p=reject"')]:
            f.write(f"  local-data: '{name}. 60 IN TXT {data}'\n")
        f.write(f"  local-data: 's1._domainkey.trial.test. 60 IN TXT {chunks(record + '; t=y')}'\n")
        f.write(f"  local-data: 's2._domainkey.trial.test. 60 IN TXT {chunks(record)}'\n")
    u.start()
    try:
        t = tern_factory({"dns": {"forward": [u.forward]},
                          "auth_checks": {"spf": True, "dkim": True, "dmarc": "enforce"}})
        for sel, code in ((b"s1", 550), (b"s2", 250)):
            msg = (f"From: <news@trial.test>\r\nTo: <{RCPT}>\r\nSubject: key {sel.decode()}\r\n"
                   f"Message-ID: <{sel.decode()}@trial.test>\r\n\r\nHello.\r\n").encode()
            signed = dkim.sign(msg, sel, b"trial.test", key,
                               include_headers=[b"from", b"to", b"subject"]) + msg
            with t.client() as c:
                expect(c.greeting, 220)
                expect(c.cmd(f"EHLO {HELO}"), 250)
                expect(c.cmd("MAIL FROM:<a@trial.test>"), 250)
                expect(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
                expect(c.cmd("DATA"), 354)
                c.send(signed + b".\r\n")
                expect(c.reply(), code)
                expect(c.cmd("QUIT"), 221)
        assert t.log_lines("event=auth_checks", "dkim=pass", "dmarc=fail", "action=reject")
        [(_, data)] = t.wait_mail_with(RCPT, "Subject: key s2")
        assert b"dmarc=pass" in data
        t.check_sanitizers()
    finally:
        u.stop()


def test_rua_size_limit(tern_factory, zone):
    t = tern_factory(reports_config(zone.forward), users=USERS)
    send(t, "a@small.test", "news@small.test", "small one")
    t.wait_mail(RCPT)
    r = t.cli("dmarc", "send-reports", check=True)
    assert "1 domain, 1 sent, 1 skipped, 0 failed" in r.stdout, r.stdout + t.log_tail()
    [(_, data)] = t.wait_mail("agg@small.test")
    assert len(data) > 1024
    assert not t.mail_files("tiny@small.test")
    [line] = t.log_lines("event=dmarc_report_skipped", "domain=small.test")
    assert "rua=mailto:tiny@small.test!1k" in line and "reason=too-large" in line
    assert "limit=1024" in line


def test_external_destination_may_redirect_on_its_host_only(tern_factory, zone):
    """RFC 9990 §3 step 9: the consumer's record may name where reports go, on its own
    host; naming another host means no report at all."""
    t = tern_factory(reports_config(zone.forward), users=USERS)
    send(t, "a@redir.test", "news@redir.test", "redirected")
    send(t, "a@evil.test", "news@evil.test", "elsewhere")
    t.wait_mail(RCPT, count=2)
    r = t.cli("dmarc", "send-reports", check=True)
    assert "2 domains, 1 sent, 1 skipped, 0 failed" in r.stdout, r.stdout + t.log_tail()
    found = t.wait_mail_with(RCPT, "Report Domain: redir.test")
    _, _, root = take_apart(found[0][1])
    assert text(root, "d:policy_published/d:domain") == "redir.test"
    assert not [p for p in t.mail_files(INBOX) if b"Report Domain:" in p.read_bytes()]
    assert t.log_lines("event=dmarc_report_skipped", "domain=evil.test",
                       "reason=external-destination-overridden-to-another-host")


def test_reports_are_dkim_signed_for_their_from_domain(tern_factory, zone, tmp_path):
    """RFC 9990 §3.5.2: report mail must pass DMARC itself: with a key for reports.from's
    domain, every report carries a DKIM signature that verifies."""
    import subprocess

    import dkim

    from conftest import CLI_TIMEOUT, tern_bin

    r = subprocess.run([tern_bin(), "dkim", "keygen", "example.test", "rep1", "--type", "rsa"],
                       capture_output=True, timeout=CLI_TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    record = "".join(re.findall(r'"([^"]*)"', r.stdout.decode())).encode()
    keyfile = tmp_path / "example.test.rep1.key"
    os.chmod(tmp_path, 0o755)
    os.chmod(keyfile, 0o644)
    cfg = reports_config(zone.forward)
    cfg["dkim"] = {"keys": Raw(f'[{{ domain = "example.test"; selector = "rep1"; '
                               f'key_file = "{keyfile}"; }}]')}
    t = tern_factory(cfg, users=USERS)
    send(t, "a@rep.test", "news@rep.test", "pass one")
    t.wait_mail(RCPT)
    t.cli("dmarc", "send-reports", check=True)
    [(_, data)] = t.wait_mail("agg@rep.test")
    # what the signer saw: the message without the trace fields added at delivery
    body = data.split(b"\r\n", 2)[2] if data.startswith(b"Return-Path:") else data
    assert b"DKIM-Signature:" in body and b"d=example.test" in body
    assert dkim.verify(body, dnsfunc=lambda name, timeout=5: record
                       if name == b"rep1._domainkey.example.test." else None)
    take_apart(data)  # still a well-formed report
