# Octopus developer entry points. `make run` and `make test` are the two commands a
# fresh machine needs (see README.md).

CARGO ?= cargo
DEMO_UPSTREAMS = payments-v1-a=127.0.0.1:18081 payments-v1-b=127.0.0.1:18082 \
                 payments-v2=127.0.0.1:18083 catalog=127.0.0.1:18084 local-app=127.0.0.1:18090

.PHONY: all build run test fmt lint check-config clean bench bench-tcp chaos soak fuzz mesh mesh-down

all: build

build:
	$(CARGO) build --release --workspace --bins

## run: build, start the demo upstreams, and run octopus on config/octopus.yaml (Ctrl-C stops both)
run: build
	@./target/release/octopus-demo-upstreams $(DEMO_UPSTREAMS) & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	sleep 0.3; \
	echo "octopus: outbound http://127.0.0.1:15001  inbound http://127.0.0.1:15006  admin http://127.0.0.1:9901"; \
	echo "try:     curl -H 'Host: payments' http://127.0.0.1:15001/"; \
	./target/release/octopus run --config config/octopus.yaml

## test: formatting, lints, and every test of the workspace
test: fmt lint check-config
	$(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-config:
	$(CARGO) run --quiet --bin octopus -- validate --config config/octopus.yaml

clean:
	$(CARGO) clean

## bench: side-by-side benchmark vs nginx, HAProxy and a pingora proxy (installs them; writes docs/benchmarks.md)
bench:
	@command -v wrk >/dev/null && command -v h2load >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v openssl >/dev/null && command -v cmake >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client nginx-light haproxy openssl cmake)
	@command -v oha >/dev/null || $(CARGO) install oha --locked
	@python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
	$(CARGO) build --release --workspace --bins
	@# The pingora peer is optional: bench/run.py runs without it when this build fails (cmake builds its zlib-ng).
	$(CARGO) build --release --locked --manifest-path bench/peers/pingora/Cargo.toml || echo "pingora peer: build failed, skipped"
	python3 bench/run.py

## bench-tcp: opaque TCP throughput (iperf3) direct, through HAProxy, nginx stream and octopus (1 hop, 2 hops, 2 hops + mTLS); writes docs/benchmarks-tcp.md
bench-tcp:
	@command -v iperf3 >/dev/null && command -v haproxy >/dev/null && command -v nginx >/dev/null && test -e /usr/lib/nginx/modules/ngx_stream_module.so && command -v openssl >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 haproxy nginx-light libnginx-mod-stream openssl)
	$(CARGO) build --release -p octopus --bin octopus
	python3 bench/tcp.py

## chaos: the chaos scenarios (crash/restart, hang, resets, reload storm, cert rotation) on a release build
chaos:
	$(CARGO) test --release -p octopus --test chaos -- --nocapture

## soak: 10 minutes of mixed load, reloads, upstream restarts and cert rotation; prints a line per minute
SOAK_MINUTES ?= 10
soak:
	$(CARGO) build --release -p octopus --bin octopus -p octopus-tests --bin octopus-soak
	OCTOPUS_BIN=target/release/octopus ./target/release/octopus-soak --minutes $(SOAK_MINUTES)

## fuzz: each cargo-fuzz target for FUZZ_SECONDS (libFuzzer; nightly if present, else stable with RUSTC_BOOTSTRAP)
FUZZ_SECONDS ?= 120
FUZZ_TOOLCHAIN := $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo +nightly)
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@mkdir -p fuzz/corpus/router
	$(if $(FUZZ_TOOLCHAIN),,RUSTC_BOOTSTRAP=1) $(CARGO) $(FUZZ_TOOLCHAIN) fuzz run -O config fuzz/corpus/config -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096
	$(if $(FUZZ_TOOLCHAIN),,RUSTC_BOOTSTRAP=1) $(CARGO) $(FUZZ_TOOLCHAIN) fuzz run -O router fuzz/corpus/router -- -max_total_time=$(FUZZ_SECONDS)

## mesh: a playground mesh on this machine: pods as network namespaces with sidecars, mTLS and a 90/10 canary (needs root; see docs/deploy.md)
# The script runs as root: through sudo when make does not run as root (cargo does not).
MESH_SH = $(if $(filter 0,$(shell id -u)),,$(if $(shell command -v sudo 2>/dev/null),sudo ))deploy/mesh/mesh.sh
mesh:
	$(CARGO) build --release -p octopus --bin octopus
	$(MESH_SH) up
	$(MESH_SH) try

## mesh-down: stop the playground mesh and remove its namespaces and state (/tmp/octopus-mesh)
mesh-down:
	$(MESH_SH) down
