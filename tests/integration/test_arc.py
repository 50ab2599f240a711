"""
test_arc.py — `tern arc seal|verify` cross-checked with an independent ARC
implementation: dkimpy (Debian's python3-dkim, arc_sign/arc_verify). tern seals and
dkimpy validates, dkimpy seals and tern validates, and a chain of hops alternating
between the two stays valid for both; a message changed after sealing fails for both.
Keys come from `tern dkim keygen`, lookups from a --dns-file table (tern) and a dict
(dkimpy).

Never: touches anything outside its temp dir, or the network.
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import make_tmpdir, tern_bin

dkim = pytest.importorskip("dkim")  # python3-dkim, in scripts/install-deps

CLI_TIMEOUT = 30

MESSAGE = (
    b"From: Alice Example <alice@example.test>\r\n"
    b"To: list@lists.example.org\r\n"
    b"Subject: ARC across hops\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <arc-1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Hello,  world.  \r\n"
    b"\r\n"
)

HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version"]


def run(*args, input=None):
    return subprocess.run([tern_bin(), *map(str, args)], input=input, capture_output=True,
                          timeout=CLI_TIMEOUT)


@pytest.fixture
def work():
    d = make_tmpdir("tern-arc-")
    yield d
    if not os.environ.get("TERN_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


def keygen(work, domain, selector):
    r = subprocess.run([tern_bin(), "dkim", "keygen", domain, selector, "--type", "rsa"],
                       capture_output=True, timeout=CLI_TIMEOUT, cwd=work)
    assert r.returncode == 0, r.stderr
    record = "".join(re.findall(r'"([^"]*)"', r.stdout.decode()))
    return work / f"{domain}.{selector}.key", record


@pytest.fixture
def keys(work):
    """Two ADMDs: tern's (tern.example) and dkimpy's (py.example), one DNS table."""
    tk, trec = keygen(work, "tern.example", "t1")
    pk, prec = keygen(work, "py.example", "p1")
    records = {"t1._domainkey.tern.example": trec, "p1._domainkey.py.example": prec}
    table = work / "dns.txt"
    table.write_text("".join(f"{n} {v}\n" for n, v in records.items()))
    return {"tern": tk, "py": pk, "table": table,
            "records": {n: v.encode() for n, v in records.items()}}


def dkimpy_verify(msg, keys):
    def dnsfunc(name, timeout=5):
        return keys["records"].get(name.decode().rstrip(".").lower(), b"")
    cv, _results, why = dkim.arc_verify(msg, dnsfunc=dnsfunc)
    # dkimpy answers None for a chain a seal already marked cv=fail ("terminated")
    return ("terminated" if cv is None else cv.decode()), why


def tern_verify(msg, keys):
    r = run("arc", "verify", "--dns-file", keys["table"], input=msg)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout.decode().strip()


def tern_seal(msg, keys, authres):
    r = run("arc", "seal", "--domain", "tern.example", "--selector", "t1", "--key",
            keys["tern"], "--authres", authres, "--dns-file", keys["table"], input=msg)
    assert r.returncode == 0, r.stderr
    return r.stdout


def dkimpy_seal(msg, keys, cv):
    """dkimpy takes cv from its own Authentication-Results (arc=) and copies that
    A-R into the AAR, so the hop writes one first, as a receiving MTA would (and
    drops the one it wrote on an earlier pass: two arc= stamps make dkimpy seal fail)."""
    msg = re.sub(rb"^Authentication-Results: py\.example;[^\r]*\r\n", b"", msg, flags=re.M)
    ar = b"Authentication-Results: py.example; arc=" + cv.encode() + b"; spf=pass " \
         b"smtp.mailfrom=alice@example.test\r\n"
    msg = ar + msg
    sets = dkim.arc_sign(msg, b"p1", b"py.example", keys["py"].read_bytes(), b"py.example",
                         include_headers=HEADERS)
    assert len(sets) == 3, "dkimpy added no ARC Set"
    return b"".join(sets) + msg


def test_tern_seals_dkimpy_validates(work, keys):
    sealed = tern_seal(MESSAGE, keys, "tern.example; arc=none; spf=pass "
                                      "smtp.mailfrom=alice@example.test")
    assert sealed.endswith(MESSAGE)
    assert sealed.startswith(b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=tern.example;")
    assert b"\r\nARC-Authentication-Results: i=1; tern.example; arc=none;" in sealed
    assert dkimpy_verify(sealed, keys)[0] == "pass"
    assert tern_verify(sealed, keys).startswith("arc=pass (i=1; oldest-pass=0)")


def test_dkimpy_seals_tern_validates(work, keys):
    sealed = dkimpy_seal(MESSAGE, keys, "none")
    assert dkimpy_verify(sealed, keys)[0] == "pass"
    out = tern_verify(sealed, keys)
    assert out.startswith("arc=pass (i=1; oldest-pass=0) header.s=py.example"), out


def test_alternating_hops_stay_valid_for_both(work, keys):
    msg = dkimpy_seal(MESSAGE, keys, "none")                                    # i=1
    msg = tern_seal(msg, keys, "tern.example; arc=pass")                        # i=2
    assert b"ARC-Seal: i=2; a=rsa-sha256; cv=pass;" in msg
    assert dkimpy_verify(msg, keys)[0] == "pass"
    msg = dkimpy_seal(msg, keys, "pass")                                        # i=3
    assert tern_verify(msg, keys).startswith("arc=pass (i=3;")
    msg = tern_seal(msg, keys, "tern.example; arc=pass")                        # i=4
    assert dkimpy_verify(msg, keys)[0] == "pass"
    assert tern_verify(msg, keys).startswith("arc=pass (i=4; oldest-pass=0)")


def test_a_changed_body_fails_for_both_and_tern_seals_cv_fail(work, keys):
    msg = dkimpy_seal(MESSAGE, keys, "none")
    msg = tern_seal(msg, keys, "tern.example; arc=pass")
    broken = msg.replace(b"Hello,", b"Goodbye,")
    assert dkimpy_verify(broken, keys)[0] == "fail"
    assert tern_verify(broken, keys).startswith("arc=fail")
    # the next tern hop records the failure (cv=fail, sealing only its own set)...
    failed = tern_seal(broken, keys, "tern.example; arc=fail")
    assert failed.startswith(b"ARC-Seal: i=3; a=rsa-sha256; cv=fail;")
    assert dkimpy_verify(failed, keys)[0] == "terminated"
    assert tern_verify(failed, keys).startswith("arc=fail")
    # ...and after that nobody adds a set
    r = run("arc", "seal", "--domain", "tern.example", "--selector", "t1", "--key",
            keys["tern"], "--authres", "tern.example; arc=fail", "--dns-file", keys["table"],
            input=failed)
    assert r.returncode == 0 and r.stdout == failed
    assert b"nothing added" in r.stderr


def test_an_older_broken_ams_only_moves_oldest_pass(work, keys):
    """A later hop changed a header that hop 1's AMS signed but re-sealed honestly:
    the chain passes and oldest-pass says which AMS still holds."""
    msg = tern_seal(MESSAGE, keys, "tern.example; arc=none")
    msg = msg.replace(b"Subject: ARC across hops", b"Subject: [list] ARC across hops")
    sealed = dkimpy_seal(msg, keys, "pass")
    assert dkimpy_verify(sealed, keys)[0] == "pass"
    assert tern_verify(sealed, keys).startswith("arc=pass (i=2; oldest-pass=2)")


def test_verify_through_dns(work):
    """The daemon's path (arc_verify_dns_start on the async resolver) against a real
    unbound: a chain passes; a seal whose key lookup fails (SERVFAIL) fails, temporary."""
    from remote_harness import DNS_RECORDS, Unbound
    key, record = keygen(work, "example.test", "a1")
    u = Unbound(records=DNS_RECORDS)
    strings = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    with open(u.conf, "a") as f:
        f.write(f"  local-data: 'a1._domainkey.example.test. 60 IN TXT {strings}'\n")
    u.start()
    try:
        conf = work / "tern.conf"
        conf.write_text(f'dns {{ forward = ["{u.forward}"]; }}\n')
        r = run("arc", "seal", "--domain", "example.test", "--selector", "a1", "--key", key,
                "--authres", "example.test; arc=none", "-c", conf, input=MESSAGE)
        assert r.returncode == 0, r.stderr
        sealed = r.stdout
        r = run("arc", "verify", "-c", conf, "--timeout", "5", input=sealed)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.decode().startswith("arc=pass (i=1; oldest-pass=0) header.s=example.test")
        r = run("arc", "seal", "--domain", "servfail.test", "--selector", "a1", "--key", key,
                "--authres", "servfail.test; arc=pass", "--cv", "pass", input=sealed)
        assert r.returncode == 0, r.stderr
        r = run("arc", "verify", "-c", conf, "--timeout", "5", input=r.stdout)
        assert r.returncode == 1
        assert r.stdout.decode().startswith(
            "arc=fail (ARC-Message-Signature i=2: key lookup failed (temporary))")
    finally:
        u.stop()
