# mynet: see README.md.
GO      ?= go
BIN     := bin/mynet
NAME    ?= mynet
ARGS    ?=

.PHONY: build run test unit e2e clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/mynet

# Run the plugin in the foreground on /run/docker/plugins/$(NAME).sock.
run: build
	./$(BIN) serve --name $(NAME) $(ARGS)

# Everything: unit, privileged and end-to-end tests (as root; installs what
# is missing and starts dockerd when no engine answers).
test:
	./scripts/test.sh

# Unit and privileged tests only (privileged ones skip without root).
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

clean:
	rm -rf bin

# The end-to-end suite alone, against the running dockerd (as root);
# MYNET_E2E_ENGINES=host,sid,sid-nft adds Debian sid's engine, with and without
# iptables (scripts/engine.sh).
e2e: build
	MYNET_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 30m ./e2e/

# Managed plugin $(PLUGIN):$(TAG) from Dockerfile and config.json, built
# without a registry (as root; details in scripts/build-plugin.sh).
TAG     ?= dev
PLUGIN  ?= mynet

.PHONY: plugin install

plugin: build
	TAG=$(TAG) PLUGIN=$(PLUGIN) MYNET_BIN=$(BIN) ./scripts/build-plugin.sh

# Host service: bin/mynet and a systemd unit ordered before docker.service.
# Starts nothing. Run `make build` first (sudo's PATH often has no go).
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system

install:
	@test -x $(BIN) || { echo "$(BIN) not found: run make build first" >&2; exit 1; }
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/mynet
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/mynet|$(PREFIX)/bin/mynet|' contrib/systemd/mynet.service >$(DESTDIR)$(UNITDIR)/mynet.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mynet.service
	install -D -m 0644 contrib/tmpfiles.d/mynet.conf $(DESTDIR)/etc/tmpfiles.d/mynet.conf
	@echo
	@echo "Installed $(PREFIX)/bin/mynet and $(UNITDIR)/mynet.service. Next:"
	@echo "    systemctl daemon-reload"
	@echo "    systemctl enable --now mynet    # starts before docker.service from now on"
	@echo "    docker network create -d mynet --ipam-driver mynet --subnet 10.123.0.0/24 appnet"

# Soak test, not part of `make test` or `make e2e`: 200 container
# create/destroy cycles across 5 networks from 8 concurrent clients, then
# no leaked object and flat plugin memory (as root; figures in docs/soak.md).
# MYNET_SOAK_CYCLES and MYNET_SOAK_CLIENTS change its size.
.PHONY: soak

soak: build
	MYNET_BIN=$(CURDIR)/$(BIN) $(GO) test -tags soak -count=1 -run TestSoak -timeout 60m -v ./e2e/

# Benchmarks side by side with Docker's bridge driver (issue 6): as root,
# with dockerd running; not part of test. Takes 8 minutes or more and the
# docker lock (/tmp/mynet-docker.lock) for the phases that use dockerd.
# Flags go in BENCH_ARGS, e.g. BENCH_ARGS=-quick; see docs/benchmarks.md.
BENCH_ARGS ?=

.PHONY: bench

bench: build
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/mynet-bench ./bench/cmd/mynet-bench
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/netbench ./bench/cmd/netbench
	GO=$(GO) ./bin/mynet-bench -mynet $(BIN) -netbench bin/netbench $(BENCH_ARGS)
