"""
test_spf.py — tern's SPF check on the real async path, cross-checked with pyspf.

A real unbound (remote_harness.Unbound) serves SPF records from static local zones on a
loopback port. `tern spf check --dns 127.0.0.1@PORT` runs the evaluator through the async
adapter on libunbound (src/policy/spf_async.c, the code a session uses), HELO identity
first, then MAIL FROM. pyspf (Debian's python3-spf, the OpenSPF reference implementation)
checks the same identities against the same unbound; the results must agree, and so must
the exp= explanation of a fail. One case where pyspf is known to be wrong (it takes a
REFUSED answer for "no record") is asserted for tern alone, against RFC 7208 §4.4.

Never: talks to anything outside 127.0.0.0/8, waits without a bound, kills a process it
did not start (unbound is stopped by its PID).
"""

import re
import subprocess

import pytest

from conftest import CLI_TIMEOUT, tern_bin
from remote_harness import DNS_RECORDS, Unbound

spf = pytest.importorskip("spf", reason="python3-spf (pyspf) is not installed")

# pyspf calls dnspython's deprecated dns.resolver.query(): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# TXT records, written as unbound local-data with single quotes around the whole RR so
# that the TXT strings keep their own double quotes. Several strings in one record are
# joined without spaces (RFC 7208 §3.3).
TXT = [
    ("spf-pass.test", '"v=spf1 ip4:1.2.3.0/24 " "-all"'),
    ("spf-fail.test", '"v=spf1 ip4:198.51.100.0/24 -all exp=why.spf-fail.test"'),
    ("why.spf-fail.test", '"%{i} is not one of the designated mail servers of %{d}."'),
    ("spf-soft.test", '"v=spf1 ~all"'),
    ("spf-neutral.test", '"v=spf1 ?all"'),
    ("spf-mx.test", '"v=spf1 mx -all"'),
    ("spf-a.test", '"v=spf1 a:host.spf-a.test/30 -all"'),
    ("spf-include.test", '"v=spf1 include:spf-mx.test include:spf-a.test -all"'),
    ("spf-redirect.test", '"v=spf1 redirect=spf-mx.test"'),
    ("spf-exists.test", '"v=spf1 exists:%{ir}.%{l1r-}.x.spf-exists.test -all"'),
    ("spf-ptr.test", '"v=spf1 ptr -all"'),
    ("spf-void.test", '"v=spf1 a:nx1.spf-void.test a:nx2.spf-void.test a:nx3.spf-void.test -all"'),
    ("spf-syntax.test", '"v=spf1 ip4:1.2.3.4/33 -all"'),
    ("spf-two.test", '"v=spf1 -all"'),
    ("spf-two.test", '"v=spf1 +all"'),
    ("spf-other-txt.test", '"google-site-verification=abc"'),
    ("spf-other-txt.test", '"v=spf1 ip4:1.2.3.4 -all"'),
    ("spf-ip6.test", '"v=spf1 ip6:2a01:4f8::/32 -all"'),
    ("spf-include-none.test", '"v=spf1 include:spf-none.test -all"'),
    ("spf-macro.test", '"v=spf1 -exists:%{l}.deny.spf-macro.test a:%{h} -all"'),
    ("helo.spf.test", '"v=spf1 a -all"'),
    ("spf-servfail.test", '"v=spf1 include:x.servfail.test -all"'),
]
OTHER = [
    ("spf-mx.test", "MX", "10 mx1.spf-mx.test."),
    ("spf-mx.test", "MX", "20 mx2.spf-mx.test."),
    ("mx1.spf-mx.test", "A", "1.2.3.5"),
    ("mx2.spf-mx.test", "A", "1.2.3.6"),
    ("mx2.spf-mx.test", "AAAA", "2a01:4f8:1::25"),
    ("host.spf-a.test", "A", "1.2.3.8"),
    ("4.3.2.1.alice.x.spf-exists.test", "A", "127.0.0.2"),
    ("4.3.2.1.in-addr.arpa", "PTR", "host.spf-ptr.test."),
    ("host.spf-ptr.test", "A", "1.2.3.4"),
    ("spf-none.test", "A", "1.2.3.4"),
    ("mallory.deny.spf-macro.test", "A", "127.0.0.2"),
    ("helo.spf.test", "A", "1.2.3.4"),
]

# (client ip, helo, mail from): each is checked by both implementations.
CASES = [
    ("1.2.3.4", "helo.spf.test", "alice@spf-pass.test"),
    ("192.0.2.9", "helo.spf.test", "alice@spf-pass.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-fail.test"),
    ("192.0.2.9", "nothere.test", "alice@spf-fail.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-soft.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-neutral.test"),
    ("1.2.3.6", "helo.spf.test", "alice@spf-mx.test"),
    ("1.2.3.7", "helo.spf.test", "alice@spf-mx.test"),
    ("2a01:4f8:1::25", "helo.spf.test", "alice@spf-mx.test"),
    ("1.2.3.9", "helo.spf.test", "alice@spf-a.test"),
    ("1.2.3.12", "helo.spf.test", "alice@spf-a.test"),
    ("1.2.3.10", "helo.spf.test", "alice@spf-include.test"),
    ("1.2.3.5", "helo.spf.test", "alice@spf-redirect.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-redirect.test"),
    ("1.2.3.4", "helo.spf.test", "alice-smith@spf-exists.test"),
    ("1.2.3.4", "helo.spf.test", "bob-smith@spf-exists.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-ptr.test"),
    ("1.2.3.5", "helo.spf.test", "alice@spf-ptr.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-void.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-syntax.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-two.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-other-txt.test"),
    ("2a01:4f8:1::25", "helo.spf.test", "alice@spf-ip6.test"),
    ("::ffff:1.2.3.4", "helo.spf.test", "alice@spf-ip6.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-none.test"),
    ("1.2.3.4", "helo.spf.test", "alice@gone.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-include-none.test"),
    ("1.2.3.4", "helo.spf.test", "mallory@spf-macro.test"),
    ("1.2.3.4", "helo.spf.test", "alice@spf-macro.test"),
    ("1.2.3.4", "helo.spf.test", ""),
    ("1.2.3.5", "helo.spf.test", ""),
]


class SpfUnbound(Unbound):
    def __init__(self):
        super().__init__(DNS_RECORDS + OTHER)
        lines = ['  local-zone: "3.2.1.in-addr.arpa." static']
        for name, data in TXT:
            lines.append(f"  local-data: '{name}. 60 IN TXT {data}'")
        with open(self.conf, "a") as f:
            f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def dns():
    u = SpfUnbound().start()
    yield u
    u.stop()


def tern_check(dns, ip, helo, mailfrom):
    cmd = [tern_bin(), "spf", "check", "--dns", dns.forward, "--helo", helo,
           "--receiver", "mx.tern.test", "--timeout", "10000", ip, mailfrom or "<>"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT + 20)
    assert p.returncode == 0, f"{cmd}: {p.stderr}"
    assert "Sanitizer" not in p.stderr, p.stderr
    out = {}
    ident = None
    for line in p.stdout.splitlines():
        m = re.match(r"^(helo|mailfrom): (\w+)$", line)
        if m:
            ident = m.group(1)
            out[ident] = {"result": m.group(2)}
            continue
        m = re.match(r"^  (\w+): (.*)$", line)
        if m and ident:
            out[ident][m.group(1)] = m.group(2)
    out["stdout"] = p.stdout
    return out


def point_pyspf_at(port):
    """pyspf resolves with dnspython when it is there (Debian's python3-spf depends on
    it), else with pydns: point whichever it uses at our unbound."""
    if spf.DNSLookup.__name__ == "DNSLookup_dnspython":
        import dns.resolver
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = port
        r.lifetime = r.timeout = 10
        dns.resolver.default_resolver = r
    else:
        import DNS
        DNS.defaults["server"] = ["127.0.0.1"]
        DNS.defaults["port"] = port


def pyspf_check(dns, ip, helo, mailfrom):
    point_pyspf_at(dns.port)
    q = spf.query(i=ip, s=mailfrom, h=helo, receiver="mx.tern.test", timeout=10)
    res, _code, exp = q.check()
    return res, exp


@pytest.mark.parametrize("ip,helo,mailfrom", CASES)
def test_tern_agrees_with_pyspf(dns, ip, helo, mailfrom):
    t = tern_check(dns, ip, helo, mailfrom)
    want, exp = pyspf_check(dns, ip, helo, mailfrom)
    got = t["mailfrom"]["result"]
    assert got == want, f"MAIL FROM {mailfrom!r} from {ip}: tern {got}, pyspf {want}\n{t['stdout']}"
    if got == "fail" and "exp=" in dict(TXT).get(mailfrom.rpartition("@")[2], ""):
        assert t["mailfrom"]["explanation"] == exp
    # the HELO identity: pyspf checks postmaster@HELO as a null reverse-path
    hwant, _ = pyspf_check(dns, ip, helo, "")
    assert t["helo"]["result"] == hwant, t["stdout"]
    # the Received-SPF field tern would add records the MAIL FROM result
    rx = re.search(r"^Received-SPF: (\w+) \(", t["stdout"], re.M)
    assert rx and rx.group(1) == got
    assert "identity=mailfrom" in t["stdout"]


def test_fail_explanation_from_exp(dns):
    t = tern_check(dns, "192.0.2.9", "helo.spf.test", "alice@spf-fail.test")
    assert t["mailfrom"]["result"] == "fail"
    assert t["mailfrom"]["explanation"] == \
        "192.0.2.9 is not one of the designated mail servers of spf-fail.test."
    assert t["mailfrom"]["mechanism"] == "-all"


def test_refused_answer_is_temperror(dns):
    # unbound refuses servfail.test: RCODE 5. RFC 7208 §4.4/§5: any RCODE other than 0
    # or 3 is temperror. (pyspf's drivers treat some such answers as "no records";
    # this one is checked against the RFC, not against pyspf.)
    t = tern_check(dns, "1.2.3.4", "helo.spf.test", "alice@spf-servfail.test")
    assert t["mailfrom"]["result"] == "temperror", t["stdout"]
    assert "DNS error" in t["mailfrom"]["problem"]


def test_helo_not_a_domain_is_none_and_null_path_reuses_helo(dns):
    t = tern_check(dns, "1.2.3.4", "[1.2.3.4]", "")
    assert t["helo"]["result"] == "none"
    assert "multi-label" in t["helo"]["problem"]
    assert t["mailfrom"]["result"] == "none"
    t = tern_check(dns, "1.2.3.4", "helo.spf.test", "")
    assert t["helo"]["result"] == "pass"
    assert t["mailfrom"]["result"] == "pass"
    assert t["mailfrom"]["domain"] == "helo.spf.test"
    assert 'envelope-from=""' in t["stdout"]
