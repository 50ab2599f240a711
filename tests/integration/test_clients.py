"""Real clients a user reaches for first: Python smtplib, swaks, curl."""

import shutil
import smtplib
import subprocess
from email.message import EmailMessage

import pytest

from conftest import QUEUED_AS_RE


def test_smtplib_sendmail(tern):
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = "alice@example.test, bob@example.test"
    msg["Subject"] = "via-smtplib"
    msg.set_content("Hello from smtplib.\n.leading dot\n")
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("pipelining") and s.has_extn("size")
        refused = s.send_message(msg)
        assert refused == {}
        code, text = s.noop()
        assert code == 250
    for u in ("alice@example.test", "bob@example.test"):
        (p, data), = tern.wait_mail_with(u, "via-smtplib")
        assert b"\n.leading dot" in data


def test_smtplib_refused_recipient_raises(tern):
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("app@example.org", ["nobody-here@example.test"], b"Subject: x\r\n\r\nx\r\n")
        code, text = e.value.recipients["nobody-here@example.test"]
        assert code == 550 and text.startswith(b"5.1.1")


@pytest.mark.tern_users(["jøran@example.test"])
def test_smtplib_smtputf8(tern):
    msg = EmailMessage()
    msg["From"] = "ǿ@example.org"
    msg["To"] = "jøran@example.test"
    msg["Subject"] = "via-smtplib-utf8"
    msg.set_content("hej\n")
    with smtplib.SMTP("127.0.0.1", tern.port, timeout=10) as s:
        # smtplib adds SMTPUTF8 (and BODY=8BITMIME) itself for a non-ASCII envelope
        s.send_message(msg)
    tern.wait_mail_with("jøran@example.test", "via-smtplib-utf8")


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks(tern):
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{tern.port}", "--to", "alice@example.test",
                        "--from", "swaks@example.org", "--header", "Subject: via-swaks",
                        "--body", "Hello from swaks", "--timeout", "10"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert QUEUED_AS_RE.search(r.stdout), r.stdout
    (p, data), = tern.wait_mail_with("alice@example.test", "via-swaks")
    assert b"Hello from swaks" in data


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_swaks_pipelining(tern):
    for extra in (["--pipeline"], ["--protocol", "SMTP"]):
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{tern.port}",
                            "--to", "bob@example.test", "--from", "swaks@example.org",
                            "--header", "Subject: via-swaks-pipe", "--timeout", "10", *extra],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    tern.wait_mail_with("bob@example.test", "via-swaks-pipe", count=2)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_smtp(tern):
    f = tern.root / "curl-msg.txt"
    f.write_bytes(b"From: <curl@example.org>\r\nTo: <alice@example.test>\r\n"
                  b"Subject: via-curl\r\n\r\nHello from curl\r\n.dot line\r\n")
    r = subprocess.run(["curl", "-sS", "--max-time", "20", f"smtp://127.0.0.1:{tern.port}",
                        "--mail-from", "curl@example.org", "--mail-rcpt", "alice@example.test",
                        "--mail-rcpt", "bob@example.test", "-T", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    for u in ("alice@example.test", "bob@example.test"):
        (p, data), = tern.wait_mail_with(u, "via-curl")
        assert b".dot line" in data and b"..dot line" not in data


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_reports_refused_recipient(tern):
    f = tern.root / "curl-msg.txt"
    f.write_bytes(b"Subject: curl-refused\r\n\r\nx\r\n")
    r = subprocess.run(["curl", "-sS", "--max-time", "20", f"smtp://127.0.0.1:{tern.port}",
                        "--mail-from", "curl@example.org", "--mail-rcpt", "nobody-here@example.test",
                        "-T", str(f)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "550" in r.stderr
