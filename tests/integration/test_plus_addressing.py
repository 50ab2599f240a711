"""Plus addressing (recipient_delimiter, Postfix's name; default "+"): user+tag@ is accepted
for an existing user and delivered to that user, into the Maildir++ folder .tag when the
user has one (a mail program or Dovecot made it), else into the inbox."""
import os
import pwd
import time

import pytest

from conftest import IS_ROOT, expect, make_message

ALICE = "alice@example.test"


def make_folder(tern, address, name):
    root = tern.maildir(address)
    for sub in ("", "/cur", "/new", "/tmp"):
        d = root.parent / (root.name + "/." + name + sub)
        d.mkdir(parents=True, exist_ok=True)
        if IS_ROOT:  # the daemon runs as nobody and writes there
            nobody = pwd.getpwnam("nobody")
            for p in (root.parent, root, d):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)


def send(tern, rcpt, subject):
    with tern.client() as c:
        c.ehlo()
        expect(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        if r.code != 250:
            return r
        expect(c.cmd("DATA"), 354)
        c.send(make_message(subject, to=rcpt) + b".\r\n")
        expect(c.reply(), 250)
        return r


def test_user_plus_tag_goes_to_the_users_inbox(tern):
    r = send(tern, "alice+news@example.test", "tagged")
    assert r.code == 250
    (path, data), = tern.wait_mail_with(ALICE, "tagged")
    assert path.parent == tern.maildir(ALICE) / "new"
    assert b"Delivered-To: alice+news@example.test\r\n" in data
    assert not (tern.maildir(ALICE).parent / "alice+news").exists()


def test_user_plus_tag_goes_into_an_existing_folder(tern):
    make_folder(tern, ALICE, "Work")
    assert send(tern, "Alice+WORK@example.test", "to work").code == 250
    folder = tern.maildir(ALICE) / ".Work" / "new"
    deadline = time.monotonic() + 10
    while not any(folder.iterdir()):
        assert time.monotonic() < deadline, tern.log_tail()
        time.sleep(0.05)
    (f,) = list(folder.iterdir())
    assert b"to work" in f.read_bytes()
    assert tern.mail_files(ALICE) == []


def test_unknown_user_with_a_tag_is_refused(tern):
    r = send(tern, "nobody+x@example.test", "nope")
    assert r.code == 550 and r.enh == "5.1.1"
    r = send(tern, "+x@example.test", "nope")
    assert r.code == 550


@pytest.mark.tern_config({"recipient_delimiter": ""})
def test_empty_delimiter_turns_it_off(tern):
    r = send(tern, "alice+news@example.test", "off")
    assert r.code == 550


@pytest.mark.tern_config({"recipient_delimiter": "-"})
def test_other_delimiter(tern):
    assert send(tern, "alice+news@example.test", "plus").code == 550
    assert send(tern, "alice-news@example.test", "dash").code == 250
    tern.wait_mail_with(ALICE, "dash")
