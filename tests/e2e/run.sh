#!/usr/bin/env bash
# run.sh — runs the web UI end-to-end tests (capture.spec.mjs, checks.spec.mjs) against a real
# `tern capture`.
#
# Owns: making sure node, Debian's chromium and playwright-core (npm, into
# tests/e2e/node_modules) are there, starting tern on free loopback ports with a temp data dir,
# running the test under a time limit, keeping tern's log beside the screenshots in
# tests/e2e/artifacts/, and stopping the tern it started, by PID.
#
# Never: download a browser (playwright-core only drives /usr/bin/chromium), listen or
# connect beyond 127.0.0.1, or signal any process it did not start.
#
# Exit: 0 pass, 1 fail, 77 skipped because node, chromium or playwright-core cannot be
# installed (the reason is printed on the last line).
#
# Env: TERN_BIN (default <repo>/build-lead/tern), CHROMIUM (default /usr/bin/chromium),
#      TERN_E2E_URL + TERN_E2E_SMTP_PORT to test an already running server instead,
#      TERN_KEEP=1 to keep the temp dir.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TERN_BIN=${TERN_BIN:-$REPO/build-lead/tern}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
ARTIFACTS=$HERE/artifacts
TEST_TIMEOUT=${TERN_E2E_TIMEOUT:-180}

skip() { echo "SKIP: $*"; exit 77; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

apt_install() {
	can_apt || return 1
	echo "# apt-get install -y $*"
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
	DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -q >/dev/null 2>&1 || true
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >/dev/null 2>&1
}

# ---------------------------------------------------------------- prerequisites
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	apt_install nodejs npm || true
fi
command -v node >/dev/null || skip "node is not installed and could not be installed"
command -v npm >/dev/null || skip "npm is not installed and could not be installed"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
	|| skip "node $(node --version) is too old (need >= 18)"

if [ ! -x "$CHROMIUM" ]; then
	apt_install chromium || true
fi
[ -x "$CHROMIUM" ] || skip "chromium is not at $CHROMIUM and could not be installed (apt-get install chromium)"

if [ ! -f "$HERE/node_modules/playwright-core/package.json" ]; then
	echo "# npm install playwright-core (no browser download)"
	(cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm install --no-audit --no-fund \
		--ignore-scripts --loglevel=error) || skip "npm could not install playwright-core"
fi

mkdir -p "$ARTIFACTS"

# ---------------------------------------------------------------- an already running server
if [ -n "${TERN_E2E_URL:-}" ]; then
	[ -n "${TERN_E2E_SMTP_PORT:-}" ] || { echo "TERN_E2E_URL needs TERN_E2E_SMTP_PORT"; exit 1; }
	timeout -k 5 "$TEST_TIMEOUT" node "$HERE/capture.spec.mjs" || exit 1
	exec timeout -k 5 "$TEST_TIMEOUT" node "$HERE/checks.spec.mjs"
fi

# ---------------------------------------------------------------- start tern capture
[ -x "$TERN_BIN" ] || { echo "FAIL: tern binary not found at $TERN_BIN (set TERN_BIN)"; exit 1; }

free_port() {
	node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
HTTP_PORT=$(free_port)
SMTP_PORT=$(free_port)
while [ "$SMTP_PORT" = "$HTTP_PORT" ]; do SMTP_PORT=$(free_port); done

TMP=$(mktemp -d /tmp/tern-e2e.XXXXXX)
chmod 0755 "$TMP"
TERN_PID=
RC=1

cleanup() {
	if [ -n "$TERN_PID" ] && kill -0 "$TERN_PID" 2>/dev/null; then
		kill -TERM "$TERN_PID" 2>/dev/null || true
		for _ in $(seq 1 100); do
			kill -0 "$TERN_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$TERN_PID" 2>/dev/null; then
			echo "# tern (pid $TERN_PID) ignored SIGTERM for 10 s; SIGKILL"
			kill -KILL "$TERN_PID" 2>/dev/null || true
		fi
		wait "$TERN_PID" 2>/dev/null || true
	fi
	[ -f "$TMP/tern.log" ] && cp "$TMP/tern.log" "$ARTIFACTS/tern.log" 2>/dev/null || true
	if [ "$RC" = 0 ] && [ -z "${TERN_KEEP:-}" ]; then
		rm -rf "$TMP"
	else
		echo "# kept $TMP"
	fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

echo "# $TERN_BIN capture --smtp 127.0.0.1:$SMTP_PORT --http 127.0.0.1:$HTTP_PORT --data-dir $TMP/data"
"$TERN_BIN" capture --smtp "127.0.0.1:$SMTP_PORT" --http "127.0.0.1:$HTTP_PORT" \
	--data-dir "$TMP/data" >"$TMP/tern.log" 2>&1 &
TERN_PID=$!

ready=
for _ in $(seq 1 100); do
	if ! kill -0 "$TERN_PID" 2>/dev/null; then
		echo "FAIL: tern capture exited early; log:"
		tail -n 40 "$TMP/tern.log"
		exit 1
	fi
	if curl -sf -m 2 -o /dev/null "http://127.0.0.1:$HTTP_PORT/api/v1/info"; then
		ready=1
		break
	fi
	sleep 0.1
done
if [ -z "$ready" ]; then
	echo "FAIL: tern capture did not answer on http://127.0.0.1:$HTTP_PORT within 10 s; log:"
	tail -n 40 "$TMP/tern.log"
	exit 1
fi

set +e
RC=0
for spec in "$HERE/capture.spec.mjs" "$HERE/checks.spec.mjs" "$HERE/tags.spec.mjs"; do
	TERN_E2E_URL="http://127.0.0.1:$HTTP_PORT" TERN_E2E_SMTP_PORT=$SMTP_PORT TMPDIR=$TMP \
		timeout -k 5 "$TEST_TIMEOUT" node "$spec"
	RC=$?
	[ "$RC" = 0 ] || { echo "FAIL: $(basename "$spec") exited $RC"; break; }
done
set -e
if [ "$RC" != 0 ]; then
	[ "$RC" = 124 ] && echo "FAIL: the test exceeded ${TEST_TIMEOUT}s"
	echo "# tern log (last 40 lines):"
	tail -n 40 "$TMP/tern.log"
	RC=1
fi
echo "# artifacts: $ARTIFACTS"
exit "$RC"
