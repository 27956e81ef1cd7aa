#!/usr/bin/env bash
# Builds the managed plugin $PLUGIN:$TAG from this repository without any
# image registry:
#
#   1. a Debian base with iptables, made once with debootstrap, kept as a
#      tarball in $MYNET_CACHE_DIR and imported as the local image
#      mynet-plugin-base:$SUITE;
#   2. `docker build` of ./Dockerfile (that base, the host's iptables backend,
#      bin/mynet), exported to $OUT/rootfs next to a copy of config.json;
#   3. `docker plugin create $PLUGIN:$TAG $OUT`.
#
#   sudo make plugin [TAG=dev] [PLUGIN=mynet]      (builds bin/mynet first)
#
# Environment:
#   TAG, PLUGIN       plugin reference $PLUGIN:$TAG (default mynet:dev); to
#                     push, PLUGIN must name a repository, e.g.
#                     registry.example.com/team/mynet
#   MYNET_BIN         static mynet binary (default bin/mynet)
#   OUT               plugin directory (default build/plugin)
#   MYNET_CACHE_DIR   base tarball and build logs (default /var/cache/mynet)
#   SUITE, MIRROR     Debian suite and mirror of the base (default bookworm and
#                     the first mirror of the apt sources that serves it)
#   IPTABLES_BACKEND  nft or legacy (default: that of the host's iptables)
#
# Rerunning is safe and fast: the base is reused, and an existing plugin of
# the same name is replaced unless networks use it. To rebuild the base,
# delete $MYNET_CACHE_DIR/base-$SUITE.tar and the image mynet-plugin-base:$SUITE.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
warn() { printf 'build-plugin.sh: warning: %s\n' "$*" >&2; }
die() { printf 'build-plugin.sh: %s\n' "$*" >&2; exit 1; }

# Resolved before the cd below, so that a relative path means what the
# caller meant.
BIN=$(realpath -m -- "${MYNET_BIN:-$(dirname "$0")/../bin/mynet}")
cd "$(dirname "$0")/.."

TAG=${TAG:-dev}
PLUGIN=${PLUGIN:-mynet}
REF=$PLUGIN:$TAG
OUT=${OUT:-build/plugin}
CACHE=${MYNET_CACHE_DIR:-/var/cache/mynet}
SUITE=${SUITE:-bookworm}
BASE_IMAGE=mynet-plugin-base:$SUITE
BASE_TAR=$CACHE/base-$SUITE.tar
# The plugin's mount sources (config.json). Docker does not create a missing
# bind source: `docker plugin enable` would fail.
STATE_DIR=/var/lib/mynet
XTABLES_LOCK=/run/xtables.lock

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, docker, $STATE_DIR): try sudo make plugin"
for tool in docker tar realpath flock; do
	command -v "$tool" >/dev/null || die "$tool not found: install it"
done
[[ -x $BIN ]] || die "$BIN not found: run make build (or make plugin, which builds it)"
# A cgo build would need the base's libc to match the build host's.
if ldd "$BIN" 2>/dev/null | grep -q '=>'; then
	die "$BIN is dynamically linked: build it with CGO_ENABLED=0 (make build)"
fi

mkdir -p "$CACHE"
# One build at a time: concurrent runs would race on the base and on $OUT.
exec 9>"$CACHE/lock"
flock 9

# networks_using prints the networks whose driver or IPAM driver is $1.
networks_using() {
	local ids
	ids=$(docker network ls -q)
	[[ -n $ids ]] || return 0
	# shellcheck disable=SC2086 # one ID per word
	docker network inspect -f '{{.Name}} {{.Driver}} {{.IPAM.Driver}}' $ids |
		awk -v ref="$1" '$2 == ref || $3 == ref { print $1 }'
}

# replaceable fails unless $REF is absent or no network uses it: removing it
# would strand them (Docker cannot delete a network whose driver is gone).
replaceable() {
	docker plugin inspect "$REF" >/dev/null 2>&1 || return 0
	local in_use
	in_use=$(networks_using "$REF" | tr '\n' ' ')
	[[ -z $in_use ]] || die "$REF is used by networks: $in_use
  Remove them, or build under another TAG. Or replace the plugin in place: its
  state is on the host, so the networks survive a reinstall (running containers
  keep their connectivity; network changes fail until it is enabled again):
    docker plugin disable -f $REF && docker plugin rm -f $REF && make plugin TAG=$TAG PLUGIN=$PLUGIN"
}
replaceable # before the slow part, and again before the removal

# debian_mirrors prints the URIs of the apt sources that serve $SUITE, in the
# one-line format (deb [options] URI SUITE COMPONENTS) and in deb822
# stanzas (URIs: and Suites: fields).
debian_mirrors() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -r $f ]] || continue
		awk -v suite="$SUITE" '$1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == suite) print $2 }' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		awk -v suite="$SUITE" '
			/^[ \t]*$/ { uri = ""; ok = 0 }
			tolower($1) == "uris:" { uri = $2 }
			tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
			uri != "" && ok { print uri; uri = "" }' "$f"
	done
}

# quietly runs "$@" with its output in a log, shown only on failure.
quietly() {
	local log=$1
	shift
	"$@" >"$log" 2>&1 && return 0
	tail -n 30 "$log" >&2
	die "failed: $* (full log: $log)"
}

# ensure_base makes the base image, from the cached tarball if there is one.
ensure_base() {
	if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
		return 0
	fi
	if [[ ! -s $BASE_TAR ]]; then
		command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap (needed once, to make the plugin's base in $CACHE)"
		local mirror=${MIRROR:-$(debian_mirrors | sed -n 1p)}
		mirror=${mirror:-http://deb.debian.org/debian}
		local dir
		dir=$(mktemp -d "$CACHE/base.XXXXXX")
		say "debootstrap $SUITE from $mirror (once; log in $CACHE/debootstrap.log)"
		quietly "$CACHE/debootstrap.log" debootstrap --variant=minbase --include=iptables "$SUITE" "$dir" "$mirror"
		# Nothing in the plugin reads these.
		rm -rf "$dir"/usr/share/{doc,man,info,locale} "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*
		# Written aside and renamed, so an interrupted run leaves no half tarball.
		tar -C "$dir" --numeric-owner -cf "$BASE_TAR.tmp" .
		mv "$BASE_TAR.tmp" "$BASE_TAR"
		rm -rf "$dir"
	fi
	say "importing $BASE_TAR as $BASE_IMAGE"
	docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		"$BASE_TAR" "$BASE_IMAGE" >/dev/null
}

# host_backend prints the host's iptables backend: dockerd uses the iptables
# on its PATH, so the plugin must use the same one (see the Dockerfile).
host_backend() {
	local v
	v=$(iptables --version 2>/dev/null) || die "iptables not found on the host: set IPTABLES_BACKEND=nft or legacy to the backend dockerd uses"
	case $v in
	*nf_tables*) echo nft ;;
	*legacy*) echo legacy ;;
	*) die "cannot tell the iptables backend from '$v': set IPTABLES_BACKEND=nft or legacy" ;;
	esac
}

ensure_base
backend=${IPTABLES_BACKEND:-$(host_backend)}

# The build context holds only the binary: the repository (with $OUT in it)
# would be sent to the daemon on every build.
work=$(mktemp -d)
image=mynet-plugin-rootfs:$$
cid=
cleanup() {
	[[ -z $cid ]] || docker rm -f "$cid" >/dev/null 2>&1 || true
	docker image rm "$image" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin" "$(dirname "$OUT")"
cp "$BIN" "$work/bin/mynet"
say "building the rootfs: $BASE_IMAGE + iptables-$backend + $BIN"
quietly "$CACHE/docker-build.log" docker build -f Dockerfile -t "$image" \
	--build-arg "BASE=$BASE_IMAGE" --build-arg "IPTABLES_BACKEND=$backend" "$work"
cid=$(docker create "$image")
rm -rf "$OUT/rootfs"
mkdir -p "$OUT/rootfs"
docker export "$cid" | tar -x -C "$OUT/rootfs"
cp config.json "$OUT/config.json"
# build/ is output only: keep it out of git without touching .gitignore.
[[ $OUT != build/* ]] || echo '*' >build/.gitignore

replaceable
if docker plugin inspect "$REF" >/dev/null 2>&1; then
	say "removing the previous $REF (no network uses it)"
	docker plugin rm -f "$REF" >/dev/null
fi
say "docker plugin create $REF $OUT"
docker plugin create "$REF" "$OUT" >/dev/null

# Host side of config.json's mounts. /run is a tmpfs: see README "Install"
# for keeping $XTABLES_LOCK across reboots.
[[ -d $STATE_DIR ]] || mkdir -m 0700 "$STATE_DIR"
[[ -e $XTABLES_LOCK ]] || (umask 077 && : >>"$XTABLES_LOCK")
# Prerequisites mynet cannot fix from inside the plugin, where /proc/sys is
# read-only; dockerd normally sets both.
[[ $(cat /proc/sys/net/ipv4/ip_forward) == 1 ]] ||
	warn "net.ipv4.ip_forward is 0: containers will not reach beyond the host; run: sysctl -w net.ipv4.ip_forward=1"
[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
	warn "br_netfilter is not loaded: isolation between containers is not enforced; run: modprobe br_netfilter"

say "done. Next:
    docker plugin enable $REF
    docker network create -d $REF --ipam-driver $REF --subnet 10.123.0.0/24 appnet
  To publish it: docker plugin push $REF (PLUGIN must name a repository you can push to)"
