"""What an operator installs: `make install` (PREFIX, DESTDIR, INSTALL_SENDMAIL), the systemd
units (checked by systemd-analyze verify, and the readiness protocol Type=notify relies on),
and the man pages (mandoc -Tlint clean, rendered by man -l, and tern.conf(5) naming every key
docs/config.md documents, so the two cannot drift)."""

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import Tern, make_tmpdir, tern_bin

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = [MAN / "man8/tern.8", MAN / "man5/tern.conf.5", MAN / "man1/tern-capture.1"]
UNITS = [ROOT / "contrib/systemd/tern.service", ROOT / "contrib/systemd/tern-capture.service"]


def make_install(dest, *extra):
    build = Path(tern_bin()).resolve().parent
    return subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"BUILD={build}",
                           f"DESTDIR={dest}", "PREFIX=/usr", *extra],
                          capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- make install


def test_make_install_lays_out_binary_pages_and_units():
    dest = make_tmpdir()
    r = make_install(dest)
    assert r.returncode == 0, r.stderr
    tern = dest / "usr/sbin/tern"
    assert os.access(tern, os.X_OK)
    assert subprocess.run([str(tern), "--version"], capture_output=True, text=True).stdout \
        .startswith("tern ")
    for p in ("usr/share/man/man8/tern.8", "usr/share/man/man5/tern.conf.5",
              "usr/share/man/man1/tern-capture.1", "usr/lib/systemd/system/tern.service",
              "usr/lib/systemd/system/tern-capture.service"):
        assert (dest / p).is_file(), p
    # the units run the installed binary, not the default prefix's
    unit = (dest / "usr/lib/systemd/system/tern.service").read_text()
    assert "ExecStart=/usr/sbin/tern serve" in unit
    assert not [ln for ln in unit.splitlines()
                if "/usr/local/" in ln and not ln.startswith("#")], unit
    # no sendmail link unless asked: it would take over the system's sendmail
    assert not (dest / "usr/sbin/sendmail").exists()
    shutil.rmtree(dest)


def test_make_install_sendmail_link_only_when_asked():
    dest = make_tmpdir()
    r = make_install(dest, "INSTALL_SENDMAIL=1")
    assert r.returncode == 0, r.stderr
    for name in ("sendmail", "mailq", "newaliases"):
        link = dest / "usr/sbin" / name
        assert link.is_symlink() and os.readlink(link) == "tern", name
    # and uninstall takes away what install put there
    build = Path(tern_bin()).resolve().parent
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "uninstall", f"BUILD={build}",
                        f"DESTDIR={dest}", "PREFIX=/usr"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    left = [p for p in dest.rglob("*") if not p.is_dir()]
    assert left == [], left
    shutil.rmtree(dest)


# ---------------------------------------------------------------- systemd units


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_units_pass_systemd_analyze_verify():
    d = make_tmpdir()
    for u in UNITS:
        # verify checks that ExecStart's binary exists: point it at the one under test
        (d / u.name).write_text(u.read_text().replace("/usr/local/sbin/tern", tern_bin()))
    # Documentation=man:... is checked too: find the pages in the tree
    env = dict(os.environ, MANPATH=str(MAN))
    r = subprocess.run(["systemd-analyze", "verify", *[str(d / u.name) for u in UNITS]],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr
    shutil.rmtree(d)


def test_unit_hardening_is_what_the_privileged_parent_allows():
    unit = dict(re.findall(r"^(\w+)=(.*)$", UNITS[0].read_text(), re.M))
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "all"
    assert unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict"
    assert unit["ReadWritePaths"] == "/var/lib/tern"
    caps = set(unit["CapabilityBoundingSet"].split())
    # bind 25, drop to 'user', hand it the data dir, read root-only keys
    assert {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN",
            "CAP_DAC_READ_SEARCH"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert set(unit["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_serve_speaks_the_readiness_protocol():
    """Type=notify: READY=1 once listening, RELOADING=1 then READY=1 around SIGHUP,
    STOPPING=1 on SIGTERM — sent by the serving process (the unprivileged child when
    started as root, which is why the unit says NotifyAccess=all)."""
    t = Tern()
    sock_dir = make_tmpdir()
    path = sock_dir / "notify"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    os.chmod(path, 0o777)  # the child runs as nobody
    rx.settimeout(20)
    logf = open(t.log_path, "ab")
    proc = subprocess.Popen([t.bin, "serve", "-c", str(t.config_path)], stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=logf,
                            env=dict(os.environ, NOTIFY_SOCKET=str(path)))
    got = []
    try:
        def expect(word):
            while True:
                msg = rx.recv(4096).decode()
                got.append(msg)
                if word in msg.split("\n"):
                    return msg
        expect("READY=1")
        # ready means accepting: the listener answers at once
        with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
            assert s.recv(512).startswith(b"220")
        proc.send_signal(signal.SIGHUP)
        expect("RELOADING=1")
        expect("READY=1")
        proc.send_signal(signal.SIGTERM)
        expect("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        logf.close()
        rx.close()
        t.cleanup()
        shutil.rmtree(sock_dir)
    assert got, "no notification"


# ---------------------------------------------------------------- man pages


def documented_keys():
    """Every key in the tables of docs/config.md's "Keys" chapter."""
    text = (ROOT / "docs/config.md").read_text()
    chapter = text.split("\n## Keys", 1)[1].split("\n## ", 1)[0]
    keys = set()
    for line in chapter.splitlines():
        m = re.match(r"^\| `([a-z_]+)`", line)
        if m:
            keys.add(m.group(1))
    assert len(keys) > 50, keys  # the parse found the tables
    return keys


def test_tern_conf_5_names_every_documented_key():
    page = (MAN / "man5/tern.conf.5").read_text()
    named = set(re.findall(r"\bIc ([a-z_]+)", page))
    missing = sorted(documented_keys() - named)
    assert not missing, f"keys in docs/config.md but not in tern.conf(5): {missing}"


def test_tern_8_names_every_command():
    page = (MAN / "man8/tern.8").read_text()
    out = subprocess.run([tern_bin(), "--help"], capture_output=True, text=True).stdout
    section = out.split("Commands:", 1)[1]
    for cmd in re.findall(r"^  ([a-z][a-z-]+)", section, re.M):
        if cmd == "version":
            continue
        assert re.search(rf"^\.(It )?Cm {re.escape(cmd)}\b", page, re.M), \
            f"tern {cmd} is not in tern(8)"


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_page_is_mandoc_lint_clean(page):
    # -Wwarning: warnings and errors; style notes such as "referenced manual not
    # found" depend on what else the machine has installed
    r = subprocess.run(["mandoc", "-Tlint", "-Wwarning", str(page)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_page_renders(page):
    r = subprocess.run(["man", "-l", "-P", "cat", str(page)], capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, MANWIDTH="80"))
    assert r.returncode == 0, r.stderr
    assert "NAME" in r.stdout and "SEE ALSO" in r.stdout
