#!/bin/sh
# Runs tern under the peer bench harness's --server contract (the team's
# bench beside the clone, not part of this project): listen on
# $BENCH_LISTEN:$BENCH_PORT, accept mail for any recipient from loopback,
# spool it durably in $BENCH_SPOOL and relay everything to $BENCH_SINK.
#
#   (in that harness's folder) sudo ./run sink postfix opensmtpd exim \
#       --server tern="exec /path/to/tern/bench/shared-bench-server.sh" --port 20040
#
# One event-loop thread (workers = 1): the harness runs its load generator
# and the sink on the same two cores as the server, and a second tern loop
# only adds a thread competing for them (same rate, accept p99 about 14 ms
# instead of 9-10; bench/results/20261206-session6-*.md). TERN_WORKERS=0
# gives tern's default, one per core; TERN_PER_DEST sets max_per_destination
# (default tern's own, 10: pipeline_next keeps ten connections to the sink
# busy); TERN_QUEUED_MEMORY sets limits.queued_memory (default 128m).
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
workers = ${TERN_WORKERS:-1};
local_domains = ["localhost"];
relay { networks = ["127.0.0.0/8"]; }
relayhost { via = "smtp://$BENCH_SINK_HOST:$BENCH_SINK_PORT"; tls = "none"; }
delivery { max_per_destination = ${TERN_PER_DEST:-10}; }
limits { max_connections = 20000; max_connections_per_ip = 20000; queued_memory = ${TERN_QUEUED_MEMORY:-128m}; }
listen { mx { address = "$BENCH_LISTEN:$BENCH_PORT"; profile = "mx"; } }
CONF
exec "$tern" serve -c "$conf"
