# hpktainer: build, test, benchmark. `make help` lists the targets.
SHELL := /bin/bash
BIN_DIR := bin
BINARIES := hpk-netd hpk-net-daemon hpk-hook hpktainer hpk-bubble
CARGO ?= cargo

# Images: `make images` builds and pushes both for amd64 and arm64, as the original;
# `make images PUSH=0 PLATFORMS=linux/amd64` builds into local storage.
REGISTRY ?= docker.io/chazapis
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PLATFORMS ?= linux/amd64,linux/arm64
PUSH ?= 1

.PHONY: help deps binaries images demo sim test lint bench fuzz soak clean man

help:
	@echo "make deps      install build/test dependencies (Debian 12, as root)"
	@echo "make binaries  release binaries into $(BIN_DIR)/"
	@echo "make images    hpktainer-base and hpk-bubble images (REGISTRY, VERSION, PLATFORMS, PUSH)"
	@echo "make demo      deps + binaries + the main job: sbatch --nodes=3 scripts/hpk.slurm on a simulated Slurm"
	@echo "make sim       deps + binaries + hosts with hpk-netd and containers, without Slurm or bubbles"
	@echo "make test      deps + every test (needs root: tests build namespaces)"
	@echo "make lint      cargo fmt --check, clippy -D warnings, shellcheck"
	@echo "make man       write man/ anew from the command lines (a test checks it is current)"
	@echo "make bench     benchmarks: figures next to a veth pair"
	@echo "make fuzz      every parser of outside input fuzzed for FUZZ_SECS (60) seconds each"
	@echo "make soak      SOAK_CYCLES (1000) container cycles, with hpk-netd and etcd killed meanwhile;"
	@echo "               then three bubbles for BUBBLE_SOAK_SECS (1800) with faults"

deps:
	scripts/install-deps.sh

binaries:
	$(CARGO) build --release --locked --workspace --bins --exclude hpk-hook
	# The hook runs at every container start and stop: linked statically (glibc's
	# static-pie) it starts in 1.3 ms instead of 1.8 here, with no loader and no libraries
	# to map. It needs no NSS (no user or host lookups), which static glibc cannot load.
	$(CARGO) rustc --release --locked -p hpk-hook --bin hpk-hook -- -C target-feature=+crt-static
	@mkdir -p $(BIN_DIR)
	@for b in $(BINARIES); do install -m 0755 target/release/$$b $(BIN_DIR)/$$b; done

images:
	REGISTRY=$(REGISTRY) VERSION=$(VERSION) PLATFORMS=$(PLATFORMS) PUSH=$(PUSH) scripts/build-images.sh

demo: deps binaries
	scripts/demo.sh

sim: deps binaries
	scripts/sim-cluster.sh

test: deps lint
	@mkdir -p target
	# Integration tests run binaries of other crates (hpk-hook): build them all first.
	$(CARGO) build --workspace --bins --locked
	set -o pipefail; $(CARGO) test --workspace --all-targets --locked 2>&1 | tee target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log
	scripts/tests/sim-slurm.sh
	scripts/tests/demo.sh
	scripts/tests/images.sh
	scripts/tests/vagrant.sh
	scripts/tests/mpi.sh

man:
	HPK_WRITE_MAN=1 $(CARGO) test --workspace --locked man_page

lint:
	$(CARGO) fmt --all -- --check
	shellcheck -x --source-path=SCRIPTDIR --severity=warning scripts/*.sh scripts/hpk.slurm scripts/tests/*.sh scripts/bench/*.sh images/*/*.sh vagrant/provision.sh
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

bench: binaries
	scripts/bench/datapath.sh
	scripts/bench/hooks.sh
	scripts/bench/overlay.sh
	scripts/bench/start.sh
	scripts/bench/scale.sh
	scripts/bench/bubbles.sh
	scripts/bench/names.sh
	scripts/bench/mpi.sh

BUBBLE_SOAK_SECS ?= 1800

# Each target FUZZ_SECS seconds, optimised (the fuzz profile), one at a time.
FUZZ_SECS ?= 60
fuzz:
	@mkdir -p target
	set -o pipefail; HPK_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test --profile fuzz --locked -p hpk-netd --lib fuzz:: \
		-- --nocapture --test-threads=1 2>&1 | tee target/fuzz.log
	@grep -o 'fuzz [a-z_]*: [0-9].*' target/fuzz.log

# Churn under faults, long; `make test` runs the same tests short.
SOAK_CYCLES ?= 1000
soak:
	@mkdir -p target
	set -o pipefail; HPK_SOAK_CYCLES=$(SOAK_CYCLES) $(CARGO) test --locked -p hpk-netd --test soak \
		-- --nocapture --test-threads=1 2>&1 | tee target/soak.log
	set -o pipefail; HPK_SOAK_CYCLES=$(SOAK_CYCLES) $(CARGO) test --locked -p hpktainer --test churn \
		-- --nocapture 2>&1 | tee -a target/soak.log
	# Three bubbles for BUBBLE_SOAK_SECS (1800): pings and transfers between two of them
	# while containers churn everywhere, etcd and the third bubble are killed.
	set -o pipefail; HPK_BUBBLE_SOAK_SECS=$(BUBBLE_SOAK_SECS) $(CARGO) test --locked -p hpk-bubble --test soak \
		-- --nocapture 2>&1 | tee -a target/soak.log
	@grep -o 'soak [a-z ]*:.*' target/soak.log

clean:
	$(CARGO) clean
	rm -rf $(BIN_DIR)
