# mynet: see README.md.
GO      ?= go
BIN     := bin/mynet
NAME    ?= mynet
ARGS    ?=

.PHONY: build run test unit e2e clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) .

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

# The end-to-end suite alone, against the running dockerd (as root).
e2e: build
	MYNET_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 15m ./e2e/
