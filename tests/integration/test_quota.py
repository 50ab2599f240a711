"""Per-mailbox quota (issue 10, item 4): a Maildir++ `maildirsize` kept the way Dovecot's
maildir quota keeps it, a limit per user from Dovecot's own users-file extra field
`userdb_quota_rule=*:storage=SIZE`, else `mailbox { quota }` (1G by default, 0 unlimited).
A message that does not fit is bounced at once with a 5.2.2 DSN to its sender; once tern
knows a mailbox is full, RCPT gets `452 4.2.2` and the sender's server keeps the message."""
import grp
import imaplib
import os
import re
import subprocess
import time

import pytest

from conftest import IS_ROOT, Raw, expect, make_message
from test_dovecot import DOVECOT, PASSWORD, Dovecot

ALICE = "alice@example.test"   # 10K by her own rule
BOB = "bob@example.test"       # no rule: mailbox.quota
SENDER = "carol@example.test"  # local, so her bounces can be read
BODY = "x" * 76 + "\r\n"       # 78 bytes a line


def with_rule(t, address, rule):
    """Appends Dovecot's userdb extra field to the address's line (fields 3-7 empty)."""
    users = t.data_dir / "users"
    lines = users.read_text().splitlines()
    out = [ln + f"::::::userdb_quota_rule={rule}" if ln.startswith(address + ":") else ln
           for ln in lines]
    users.write_text("\n".join(out) + "\n")


def make(tern_factory, overrides=None):
    t = tern_factory(overrides, users=(ALICE, BOB, SENDER), start=False)
    with_rule(t, ALICE, "*:storage=10K")
    t.start()
    return t


def send(t, rcpt, subject, lines=50):
    """One message from SENDER; returns the RCPT reply (DATA only after a 250)."""
    with t.client() as c:
        c.ehlo()
        expect(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        if r.code != 250:
            c.cmd("QUIT")
            return r
        expect(c.cmd("DATA"), 354)
        c.send(make_message(subject, body=BODY * lines, frm=SENDER, to=rcpt) + b".\r\n")
        expect(c.reply(), 250)
        return r


def delivered(t, address, n):
    """Waits for n deliveries to address in the log: logged once the batch (file and
    maildirsize delta) is complete, unlike the file's appearance in new/."""
    deadline = time.monotonic() + 10
    pat = re.compile(rf"event=delivered .*to=<?{re.escape(address)}>?")
    while len([ln for ln in t.log().splitlines() if pat.search(ln)]) < n:
        assert time.monotonic() < deadline, t.log_tail()
        time.sleep(0.05)


def maildirsize(t, address):
    """(limit line, summed bytes, summed count) of the Maildir's maildirsize."""
    text = (t.maildir(address) / "maildirsize").read_text()
    first, *rest = text.split("\n")
    assert text.endswith("\n")
    deltas = [tuple(int(v) for v in ln.split()) for ln in rest if ln.strip()]
    return first, sum(b for b, _ in deltas), sum(c for _, c in deltas)


def stored_bytes(t, address):
    files = [p for sub in ("new", "cur") for p in (t.maildir(address) / sub).iterdir()]
    return sum(p.stat().st_size for p in files), len(files)


def test_user_rule_fills_the_mailbox_then_bounces_with_5_2_2(tern_factory):
    t = make(tern_factory)
    # about 4K each: two fit in 10K, the third does not
    for i in (1, 2):
        assert send(t, ALICE, f"fits {i}").code == 250
        t.wait_mail_with(ALICE, f"fits {i}")
    assert send(t, ALICE, "too big").code == 250
    (path, dsn), = t.wait_mail_with(SENDER, "5.2.2")
    assert b"Status: 5.2.2" in dsn and b"mailbox full" in dsn.lower()
    assert re.search(rb"Final-Recipient: rfc822; ?alice@example.test", dsn, re.I)
    assert not any(b"too big" in p.read_bytes() for p in t.mail_files(ALICE))
    t.wait_log(r"event=bounced .*to=<?alice@example.test>?.*status=5\.2\.2")
    # the file Dovecot reads agrees with what is on disk
    first, used, count = maildirsize(t, ALICE)
    assert first == "10240S"
    assert (used, count) == stored_bytes(t, ALICE)
    assert count == 2


def test_known_full_mailbox_refuses_rcpt_with_452(tern_factory):
    t = make(tern_factory)
    assert send(t, ALICE, "first").code == 250
    delivered(t, ALICE, 1)
    # Dovecot stores a big message (IMAP APPEND) and appends its own delta line
    with open(t.maildir(ALICE) / "maildirsize", "a") as f:
        f.write("20000 1\n")
    # tern reads Dovecot's delta: this one bounces, and tern now knows she is full
    assert send(t, ALICE, "over", lines=1).code == 250
    t.wait_mail_with(SENDER, "5.2.2")
    r = send(t, ALICE, "refused", lines=1)
    assert r.code == 452 and r.enh == "4.2.2", r
    assert "full" in r.text.lower()
    t.wait_log(r"event=rejected .*code=452 reason=mailbox-full")
    # a plus address names the same mailbox; other users are not affected
    r = send(t, "alice+tag@example.test", "refused too", lines=1)
    assert r.code == 452, r
    assert send(t, BOB, "bob still gets mail", lines=1).code == 250
    t.wait_mail_with(BOB, "bob still gets mail")


def test_user_without_rule_gets_the_configured_default(tern_factory):
    t = make(tern_factory, {"mailbox": {"quota": Raw("6k")}})
    assert send(t, BOB, "bob one").code == 250
    t.wait_mail_with(BOB, "bob one")
    assert send(t, BOB, "bob two").code == 250
    t.wait_mail_with(SENDER, "5.2.2")
    first, used, count = maildirsize(t, BOB)
    assert first == "6144S" and count == 1
    # alice's own rule wins over the default
    for i in (1, 2):
        assert send(t, ALICE, f"alice {i}").code == 250
    delivered(t, ALICE, 2)
    assert maildirsize(t, ALICE)[0] == "10240S"


def test_default_quota_is_1g_and_0_is_unlimited(tern_factory):
    t = make(tern_factory)
    assert send(t, BOB, "default").code == 250
    delivered(t, BOB, 1)
    assert maildirsize(t, BOB)[0] == "1073741824S"
    u = make(tern_factory, {"mailbox": {"quota": 0}})
    assert send(u, BOB, "unlimited").code == 250
    u.wait_mail_with(BOB, "unlimited")
    assert not (u.maildir(BOB) / "maildirsize").exists()


def test_bad_quota_rule_in_users_file_is_refused_with_its_line(tern_factory):
    t = tern_factory(users=(ALICE,), start=False)
    with_rule(t, ALICE, "*:storage=+10%")
    r = t.cli("user", "list")
    assert r.returncode != 0 and "users:1:" in r.stderr and "relative quota" in r.stderr, r


def test_effective_config_shows_the_mailbox_quota(tern_factory):
    t = tern_factory(start=False)
    r = t.cli("check-config", check=True)
    assert re.search(r"mailbox \{\s+quota = 1g;", r.stdout), r.stdout
    t.config["mailbox"] = {"quota": Raw("512m")}
    t.write_config()
    r = t.cli("check-config", check=True)
    assert re.search(r"mailbox \{\s+quota = 512m;", r.stdout), r.stdout
    t.config["mailbox"] = {"quota": Raw("-1")}
    t.write_config()
    assert t.cli("check-config").returncode != 0


# --------------------------------------------------------------------------
# Dovecot agrees: the same maildirsize, read and appended by both.

def doveadm_quota(d, user):
    """{'STORAGE': (value, limit), 'MESSAGE': (value, limit)} from `doveadm quota get`
    (STORAGE in kilobytes, as doveadm prints it)."""
    r = subprocess.run(["doveadm", "-c", str(d.conf), "-f", "flow", "quota", "get", "-u", user],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr + d.logtext()
    out = {}
    for line in r.stdout.splitlines():
        f = dict(re.findall(r"(\w+)=(\S*)", line.replace("Quota name", "Quota_name")))
        out[f["Type"]] = (int(f["Value"]), f["Limit"])
    return out


@pytest.mark.skipif(not IS_ROOT or not os.access(DOVECOT, os.X_OK),
                    reason="needs root and Debian's dovecot (scripts/install-deps)")
def test_dovecot_quota_agrees_with_tern(tern_factory):
    t = tern_factory(users=(), start=False)
    t.user_add(ALICE, PASSWORD)
    os.chown(t.data_dir / "users", -1, grp.getgrnam("dovecot").gr_gid)
    os.chmod(t.data_dir / "users", 0o640)
    for u in (BOB, SENDER):
        t.user_add(u, PASSWORD)
    with_rule(t, ALICE, "*:storage=10K")
    t.start()
    d = Dovecot(t)
    try:
        for i in (1, 2):
            assert send(t, ALICE, f"dc {i}", lines=20).code == 250
        delivered(t, ALICE, 2)
        # a batch renames its files into new/ before it appends their maildirsize deltas:
        # wait (bounded) until both deltas are there too
        deadline = time.monotonic() + 10
        while maildirsize(t, ALICE)[2] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _, used, count = maildirsize(t, ALICE)
        q = doveadm_quota(d, ALICE)
        assert q["STORAGE"] == (-(-used // 1024), "10"), (q, used)  # doveadm rounds up
        assert q["MESSAGE"][0] == count == 2
        # Dovecot stores a message (IMAP APPEND): its delta is tern's usage too
        m = imaplib.IMAP4("127.0.0.1", d.imap_port, timeout=15)
        m.login(ALICE, PASSWORD)
        typ, _ = m.append("INBOX", None, None, make_message("appended", body=BODY * 60))
        assert typ == "OK"
        typ, got = m.getquotaroot("INBOX")
        assert typ == "OK" and b"STORAGE" in got[1][0], got
        m.logout()
        first, used, count = maildirsize(t, ALICE)
        assert first == "10240S" and count == 3
        assert (used, count) == stored_bytes(t, ALICE)
        assert used > 8000
        # ... so tern bounces what no longer fits, and still takes what does
        assert send(t, ALICE, "after append", lines=30).code == 250
        t.wait_mail_with(SENDER, "5.2.2")
        assert send(t, ALICE, "small one", lines=1).code == 250
        delivered(t, ALICE, 3)
        _, used, count = maildirsize(t, ALICE)
        assert (used, count) == stored_bytes(t, ALICE) and count == 4
        q = doveadm_quota(d, ALICE)
        assert q["STORAGE"][0] == -(-used // 1024) and q["MESSAGE"][0] == 4
        # a user without a rule: the default, printed into Dovecot's config by tern
        assert send(t, BOB, "bob", lines=1).code == 250
        delivered(t, BOB, 1)
        _, used, _ = maildirsize(t, BOB)
        assert doveadm_quota(d, BOB)["STORAGE"] == (-(-used // 1024), str(1 << 20))
    except Exception:
        print(d.logtext())
        raise
    finally:
        d.stop()
