#!/bin/sh
# Runs tern under the peer bench harness's --server contract (the team's
# bench beside the clone, not part of this project): listen on
# $BENCH_LISTEN:$BENCH_PORT, accept mail for any recipient from loopback,
# spool it durably in $BENCH_SPOOL and relay everything to $BENCH_SINK.
#
#   (in that harness's folder) sudo ./run sink postfix opensmtpd exim \
#       --server tern="exec /path/to/tern/bench/shared-bench-server.sh" --port 20040
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tern=${TERN_BIN:-$here/../build/tern}
conf=$BENCH_SPOOL/tern.conf
mkdir -p "$BENCH_SPOOL"
chmod 0755 "$BENCH_SPOOL"
cat >"$conf" <<CONF
hostname = "tern.bench.test";
data_dir = "$BENCH_SPOOL/data";
user = "nobody";
log_level = "warn";
workers = ${TERN_WORKERS:-0};
local_domains = ["localhost"];
relay { networks = ["127.0.0.0/8"]; }
relayhost { via = "smtp://$BENCH_SINK_HOST:$BENCH_SINK_PORT"; tls = "none"; }
delivery { max_per_destination = 50; }
limits { max_connections = 20000; max_connections_per_ip = 20000; }
listen { mx { address = "$BENCH_LISTEN:$BENCH_PORT"; profile = "mx"; } }
CONF
exec "$tern" serve -c "$conf"
