# Octopus developer entry points. `make run` and `make test` are the two commands a
# fresh machine needs (see README.md).

CARGO ?= cargo
DEMO_UPSTREAMS = payments-v1-a=127.0.0.1:18081 payments-v1-b=127.0.0.1:18082 \
                 payments-v2=127.0.0.1:18083 catalog=127.0.0.1:18084 local-app=127.0.0.1:18090

.PHONY: all build run test fmt lint check-config clean bench

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

## bench: side-by-side benchmark vs nginx and HAProxy (installs them; writes docs/benchmarks.md)
bench:
	@command -v wrk >/dev/null && command -v h2load >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client nginx-light haproxy)
	@python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
	$(CARGO) build --release --workspace --bins
	python3 bench/run.py
