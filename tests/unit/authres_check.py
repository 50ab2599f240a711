#!/usr/bin/python3
"""authres_check.py — parses an Authentication-Results field written by tern's
authres_build with python3-authres (an independent RFC 8601 parser; test_authres.c
runs it on the fields it builds) and compares what it read with what the test
expects.

usage: authres_check.py FILE EXPECTED

FILE holds one header field (folded, CRLF line ends). EXPECTED is the parse in
the canonical form printed here: "authserv-id; method=result type.name=value ...; ..."
(properties in field order, comments and reasons left out). Exits 0 when they are
equal, 1 (with both on stderr) otherwise, 2 when the field does not parse.
"""
import sys

import authres
import authres.arc  # noqa: F401 (registers the arc method)
import authres.dmarc  # noqa: F401 (registers dmarc header.from / policy.dmarc)


def canonical(h):
    parts = [h.authserv_id]
    for r in h.results:
        s = "%s=%s" % (r.method, r.result)
        for p in r.properties:
            s += " %s.%s=%s" % (p.type, p.name, p.value)
        parts.append(s)
    return "; ".join(parts)


def main():
    with open(sys.argv[1], "rb") as f:
        raw = f.read().decode("utf-8")
    if not raw.endswith("\r\n"):
        print("field does not end with CRLF", file=sys.stderr)
        return 1
    try:
        h = authres.AuthenticationResultsHeader.parse(raw.rstrip("\r\n"))
    except Exception as e:  # any parse failure is the test's failure
        print("does not parse: %r" % e, file=sys.stderr)
        return 2
    got = canonical(h)
    if got != sys.argv[2]:
        print("got:  %s\nwant: %s" % (got, sys.argv[2]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
