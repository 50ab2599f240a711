# tern — the two commands a new user needs are `make run` and `make test`.
JOBS     ?= $(shell nproc)
BUILD    ?= build
TESTDIR  ?= build-test
FUZZDIR  ?= build-fuzz
FUZZ_SECONDS ?= 30

.PHONY: all deps build run test test-unit test-integration fuzz fuzz-short bench clean format

all: build

deps:
	@scripts/install-deps

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
	@scripts/run-fuzz $(FUZZDIR) $(FUZZ_SECONDS)

fuzz: FUZZ_SECONDS = 600
fuzz: fuzz-build
	@scripts/run-fuzz $(FUZZDIR) $(FUZZ_SECONDS) $(FUZZ_SECONDS)

# Figures, never assertions, from the clone alone: tern's own load generator (bench/smtpload.c,
# built beside tern) drives accept and local delivery; spool_bench times group commit.
bench: build
	@/usr/bin/python3 bench/local_delivery.py --tern $(BUILD)/tern --smtpload $(BUILD)/smtpload
	@$(BUILD)/spool_bench

format:
	clang-format -i $$(git ls-files 'src/*.[ch]' 'tests/*.[ch]')

clean:
	rm -rf $(BUILD) $(TESTDIR) $(FUZZDIR)
