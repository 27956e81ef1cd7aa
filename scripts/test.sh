#!/usr/bin/env bash
# Runs every mynet test: unit and privileged tests, then the end-to-end suite
# against a real dockerd. Installs what is missing (Debian/Ubuntu) and starts
# containerd and dockerd if no engine answers; leaves them running.
#
#   sudo scripts/test.sh        (or: sudo make test)
#
# Logs: ${MYNET_TEST_LOGDIR:-/tmp/mynet-test-logs}
set -euo pipefail

cd "$(dirname "$0")/.."
LOGDIR=${MYNET_TEST_LOGDIR:-/tmp/mynet-test-logs}

say() { printf '==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (the tests create bridges, iptables rules and containers): try sudo make test"
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/{build,lint,layout,unit,fuzz,e2e,cluster}.log # so the summary never counts an old run

# sudo's secure_path usually leaves out the Go toolchain.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || die "go not found: install Go (see go.mod for the version) and put it on PATH"

install_missing() {
	local missing=() cmd pkg
	# command:package; -race needs cgo, hence gcc and the libc headers.
	for pair in docker:docker.io dockerd:docker.io containerd:containerd iptables:iptables \
		ip:iproute2 nft:nftables make:make gcc:gcc debootstrap:debootstrap; do
		cmd=${pair%%:*} pkg=${pair#*:}
		command -v "$cmd" >/dev/null || missing+=("$pkg")
	done
	# The e2e image needs a static busybox; Debian's plain busybox is dynamic.
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
	[[ -e /usr/include/stdio.h ]] || missing+=(libc6-dev)
	((${#missing[@]})) || return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

CONTAINERD_SOCK=/run/containerd/containerd.sock
engine_up() { timeout 10 docker info >/dev/null 2>&1; }
containerd_up() { timeout 5 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }

# Daemons are started with setsid, out of this script's process group, so
# that a Ctrl-C during the tests does not take the engine down too. A second
# copy started while one is still coming up exits on its pid file lock.
# Starts a daemon that outlives this script, in its own session, with none
# of our descriptors beyond 0-2. An inherited one would be held for the
# daemon's life: run as `flock LOCK make test`, the engine would hold LOCK
# and the e2e suite, which takes the same lock, would wait for it forever.
daemon() {
	local log=$1 fd
	shift
	(
		for fd in "/proc/$BASHPID/fd/"*; do
			fd=${fd##*/}
			((fd > 2)) && eval "exec $fd>&-"
		done
		exec setsid "$@" >>"$log" 2>&1 </dev/null
	) &
}

start_engine() {
	engine_up && { say "using the running docker engine"; return 0; }
	say "starting containerd and dockerd (logs in $LOGDIR)"
	if ! containerd_up; then
		daemon "$LOGDIR/containerd.log" containerd
		for _ in $(seq 40); do containerd_up && break; sleep 0.5; done
	fi
	daemon "$LOGDIR/dockerd.log" dockerd --containerd="$CONTAINERD_SOCK"
	for _ in $(seq 60); do
		engine_up && return 0
		sleep 1
	done
	tail -n 30 "$LOGDIR/dockerd.log" >&2 || true
	die "docker engine did not answer within 60 s; see $LOGDIR/dockerd.log"
}

# Runs "$@" with output shown and copied to $LOGDIR/$name.log; records the
# result and duration under $name.
declare -A result took
step() {
	local name=$1 t0=$SECONDS
	shift
	say "$name: $*"
	if "$@" 2>&1 | tee "$LOGDIR/$name.log"; then result[$name]=ok; else result[$name]=FAIL; fi
	took[$name]=$((SECONDS - t0))s
}

# staticcheck, pinned (2026.2.2: it builds with and checks Go 1.26). Installed
# from the module proxy when missing or of another version. Its default
# checks are the list; there is no staticcheck.conf.
STATICCHECK_VERSION=v0.8.2

# shellcheck disable=SC2317 # called through step
lint() {
	local bin sc
	bin=$(go env GOBIN)
	[[ -n $bin ]] || bin="$(go env GOPATH | cut -d: -f1)/bin"
	sc=$bin/staticcheck
	if ! "$sc" -version 2>/dev/null | grep -qF "(${STATICCHECK_VERSION#v})"; then
		say "installing staticcheck $STATICCHECK_VERSION"
		go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" || return 1
	fi
	local rc=0
	say "go vet"
	go vet ./... || rc=1
	say "staticcheck $STATICCHECK_VERSION"
	"$sc" ./... || rc=1
	return $rc
}

# File size, function length and import direction (internal/layout).
# shellcheck disable=SC2317 # called through step
layout() {
	go test -count=1 ./internal/layout
}

# Every package but the e2e suite, which needs the binary and runs last,
# and the layout check, which is a step of its own.
# shellcheck disable=SC2317 # called through step
unit_tests() {
	local all pkgs
	all=$(go list ./...) || return 1
	mapfile -t pkgs < <(grep -v -e /e2e -e /internal/layout <<<"$all")
	# A privileged test whose tool is missing fails here instead of
	# skipping: install_missing has put every tool in place.
	MYNET_PRIVILEGED_REQUIRED=1 go test -race -count=1 "${pkgs[@]}"
}

# Each fuzz target for a short, bounded run: enough to catch a regression
# in decoding or option parsing on every run; long runs are for humans
# (MYNET_FUZZTIME=5m). The default bound is a count of executions, about
# ten seconds' worth each, not a duration: with a duration, Go's fuzz
# coordinator can report its own -fuzztime deadline as a failure with no
# crasher (golang/go#75804, fixed in Go 1.27, not in 1.26). It did so once
# in CI on FuzzRequests.
# shellcheck disable=SC2317 # called through step
fuzz_targets() {
	local target pkg name count
	# FuzzDataplane builds a namespace per input, hence its small count.
	for target in plugin:FuzzRequests:40000 plugin:FuzzParseCreateNetwork:100000 ipam:FuzzPool:300000 bridge:FuzzDataplane:30; do
		IFS=: read -r pkg name count <<<"$target"
		go test -run '^$' -fuzz "^$name\$" -fuzztime "${MYNET_FUZZTIME:-${count}x}" "./$pkg" || return 1
	done
}

install_missing
start_engine

step build make build
step lint lint
step layout layout
step unit unit_tests
step fuzz fuzz_targets
# The engines the end-to-end suite runs against, one after the other: the
# host's, then Debian sid's beside it, then sid's again without iptables,
# with mynet on nftables (scripts/engine.sh; e2e/doc.go).
E2E_ENGINES=${MYNET_E2E_ENGINES:-host,sid,sid-nft}
if [[ ${result[build]} == ok ]]; then
	# Root and an engine are ensured above, so the suite must run, not skip.
	step e2e env MYNET_BIN="$PWD/bin/mynet" MYNET_E2E_LOGDIR="$LOGDIR" MYNET_E2E_REQUIRED=1 \
		MYNET_E2E_ENGINES="$E2E_ENGINES" go test -count=1 -v -timeout 30m ./e2e/
	# Several Docker hosts and one etcd on this machine (scripts/cluster.sh).
	step cluster env MYNET_BIN="$PWD/bin/mynet" MYNET_E2E_REQUIRED=1 \
		go test -count=1 -v -timeout 10m ./e2e/cluster/
else
	result[e2e]="not run (build failed)" took[e2e]=0s
	result[cluster]="not run (build failed)" took[cluster]=0s
fi

say "summary (logs in $LOGDIR)"
status=0
for name in build lint layout unit fuzz e2e cluster; do
	printf '  %-7s %-24s %s\n' "$name" "${result[$name]}" "${took[$name]}"
	[[ ${result[$name]} == ok ]] || status=1
done
# One line per engine, e.g. "e2e (docker 28.5.2): 27 passed, 0 failed, 0 skipped".
if [[ -f $LOGDIR/e2e.log ]]; then
	grep '^e2e (' "$LOGDIR/e2e.log" || true
fi
exit $status
