# tern — the two commands a new user needs are `make run` and `make test`.
JOBS     ?= $(shell nproc)
BUILD    ?= build
TESTDIR  ?= build-test
FUZZDIR  ?= build-fuzz
FUZZ_SECONDS ?= 30
# fuzz-short: the wire-facing parsers get FUZZ_SECONDS, every other target this many
FUZZ_OTHER_SECONDS ?= 5

# Installation (make install): PREFIX, DESTDIR as usual; INSTALL_SENDMAIL=1 also links
# sendmail, mailq and newaliases to tern (only when asked: they take over the system's).
PREFIX   ?= /usr/local
DESTDIR  ?=
SBINDIR  ?= $(PREFIX)/sbin
MANDIR   ?= $(PREFIX)/share/man
UNITDIR  ?= $(PREFIX)/lib/systemd/system
INSTALL_SENDMAIL ?= 0

.PHONY: all deps build run test test-unit test-integration fuzz fuzz-short bench bench-capture \
	bench-deps bench-relay bench-scale bench-api bench-bigmsg clean format install uninstall

all: build

deps:
	@scripts/install-deps

# The benchmarks' own packages (postfix, for smtp-sink), which the tests never need.
bench-deps:
	@scripts/install-deps --bench

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTERN_TESTS=OFF >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/tern serve

# The test build: ASan + UBSan, unit and integration tests, then short fuzz runs.
test: deps
	@cmake -S . -B $(TESTDIR) -DCMAKE_BUILD_TYPE=Debug -DTERN_SANITIZE=ON >/dev/null
	@cmake --build $(TESTDIR) -j $(JOBS)
	cd $(TESTDIR) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure
	@$(MAKE) --no-print-directory fuzz-short

fuzz-build: deps
	@CC=clang cmake -S . -B $(FUZZDIR) -DCMAKE_BUILD_TYPE=Debug -DTERN_FUZZ=ON >/dev/null
	@cmake --build $(FUZZDIR) -j $(JOBS)

# Each fuzz target for FUZZ_SECONDS, seeded from tests/fuzz/seeds/NAME.
fuzz-short: fuzz-build
	@scripts/run-fuzz $(FUZZDIR) $(FUZZ_SECONDS) $(FUZZ_OTHER_SECONDS)

fuzz: FUZZ_SECONDS = 600
fuzz: fuzz-build
	@scripts/run-fuzz $(FUZZDIR) $(FUZZ_SECONDS) $(FUZZ_SECONDS)

# Figures, never assertions, from the clone alone: tern's own load generator (bench/smtpload.c,
# built beside tern) drives accept and local delivery; spool_bench times group commit.
# BENCH_BASELINE=/path/to/other/tern runs that binary beside this one on the same load.
# bench-capture: capture mode beside maildev 3 (npm) in the same run.
BENCH_BASELINE ?=
bench: build
	@/usr/bin/python3 bench/local_delivery.py --tern $(BUILD)/tern --smtpload $(BUILD)/smtpload \
		$(if $(BENCH_BASELINE),--tern-baseline $(BENCH_BASELINE))
	@$(BUILD)/spool_bench

bench-capture: build
	@/usr/bin/python3 bench/capture_bench.py --tern $(BUILD)/tern --smtpload $(BUILD)/smtpload \
		$(if $(BENCH_BASELINE),--tern-baseline $(BENCH_BASELINE))

# bench-api (bench/api_bench.py): HTTP API sends/s (202 after the spool commit; concurrent
# keep-alive clients, 4 KiB bodies) beside SMTP accepts/s (smtpload) of the same server.
bench-api: build
	@/usr/bin/python3 bench/api_bench.py --tern $(BUILD)/tern --smtpload $(BUILD)/smtpload

# bench-relay (bench/relay.py): durable relay to smtp-sink (Debian package postfix) as the
# next hop, driven by smtpload; BENCH_BASELINE alternates the other binary rep by rep.
bench-relay: build bench-deps
	@/usr/bin/python3 bench/relay.py --tern $(BUILD)/tern --smtpload $(BUILD)/smtpload \
		$(if $(BENCH_BASELINE),--tern-baseline $(BENCH_BASELINE))

# Connection scale (bench/scale.py): 50,000 idle sessions (PSS per connection) and the accept
# rate with 5,000 concurrent senders against 50. Raises the fd limit for itself, tern and
# smtpload (root, or a hard limit of 60,000 or more), never tern's defaults.
bench-scale: build
	@/usr/bin/python3 bench/scale.py --tern $(BUILD)/tern --smtpload $(BUILD)/smtpload

# Large messages (bench/bigmsg.py): peak RSS of 100 concurrent 25 MB messages relayed to a
# sink, and the RSS growth of one 200 MB message.
bench-bigmsg: build
	@/usr/bin/python3 bench/bigmsg.py --tern $(BUILD)/tern

# The binary from $(BUILD) (built first if absent), the man pages, and the systemd units
# with the installed binary's path in ExecStart.
install:
	@test -x $(BUILD)/tern || $(MAKE) --no-print-directory build
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BUILD)/tern $(DESTDIR)$(SBINDIR)/tern
	install -m 0644 man/man1/tern-capture.1 $(DESTDIR)$(MANDIR)/man1/tern-capture.1
	install -m 0644 man/man5/tern.conf.5 $(DESTDIR)$(MANDIR)/man5/tern.conf.5
	install -m 0644 man/man8/tern.8 $(DESTDIR)$(MANDIR)/man8/tern.8
	for u in tern.service tern-capture.service; do \
		sed 's#/usr/local/sbin/tern#$(SBINDIR)/tern#g' contrib/systemd/$$u \
			> $(DESTDIR)$(UNITDIR)/$$u.tmp && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		mv $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	@if [ "$(INSTALL_SENDMAIL)" = 1 ]; then \
		for l in sendmail mailq newaliases; do \
			ln -sf tern $(DESTDIR)$(SBINDIR)/$$l && echo "linked $(SBINDIR)/$$l -> tern"; \
		done; \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/tern $(DESTDIR)$(MANDIR)/man1/tern-capture.1 \
		$(DESTDIR)$(MANDIR)/man5/tern.conf.5 $(DESTDIR)$(MANDIR)/man8/tern.8 \
		$(DESTDIR)$(UNITDIR)/tern.service $(DESTDIR)$(UNITDIR)/tern-capture.service
	for l in sendmail mailq newaliases; do \
		if [ "$$(readlink $(DESTDIR)$(SBINDIR)/$$l)" = tern ]; then rm -f $(DESTDIR)$(SBINDIR)/$$l; fi; \
	done

format:
	clang-format -i $$(git ls-files 'src/*.[ch]' 'tests/*.[ch]')

clean:
	rm -rf $(BUILD) $(TESTDIR) $(FUZZDIR)
