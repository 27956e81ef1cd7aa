#!/usr/bin/env bash
# Runs a second Docker engine beside the host's, for the e2e engine matrix and
# for manual use. The interface is a contract; other tooling drives it:
#
#   scripts/engine.sh up ENGINE       builds or reuses the engine's root
#                                     filesystem, starts it if it is not
#                                     running, prints DOCKER_HOST=unix:///...
#                                     on a line of its own
#   scripts/engine.sh exec ENGINE CMD [ARGS...]
#                                     runs CMD in the engine's network
#                                     namespace, with its /run/docker/plugins
#                                     and its iptables, on the host's files
#   scripts/engine.sh down ENGINE     stops what `up` started, by PID, and
#                                     removes its namespaces, mounts, cgroups
#
# ENGINE is a Debian suite whose docker.io the engine runs: sid (28.5) or
# trixie (26.1). Each has its own root filesystem, namespaces, cgroup and
# /run/mynet-engine/ENGINE, so both may run at once. sid-nft is sid's engine
# on sid's root filesystem, started with --iptables=false --ip6tables=false
# as on hosts whose firewall is nftables only (issue 13): it writes no
# firewall rule, and its own data root (/var/lib/docker-sid-nft in the root
# filesystem) lets it run beside sid.
#
# The engine runs from a debootstrapped root filesystem (cached under
# $MYNET_ENGINE_CACHE, default /var/cache/mynet/engines) in a network
# namespace and a mount namespace of its own whose root *is* that root
# filesystem (pivot_root, not chroot: runc's `exec` joins a container's mount
# namespace and relies on its pivot_root, which fails under a chroot). Its
# /run is private; only its API socket and its plugin directory are shared
# with the host, under /run/mynet-engine/ENGINE, and the host's /tmp. The
# host's engine is never touched.
#
# Commands run with `exec` see the host's files (the checkout, the host's
# tools) but the engine's network, /run/docker/plugins (a plugin started so
# is the one this engine finds) and iptables: iptables* on PATH are the root
# filesystem's, run in the engine's root, because the host's older iptables
# cannot parse the chains a newer engine writes. The host engine's socket and
# pid file are hidden from them.
set -euo pipefail

say() { printf 'engine.sh: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}
usage() { die "usage: $0 up|down ENGINE, or $0 exec ENGINE CMD [ARGS...]"; }

SELF=$(readlink -f "$0")
(($# >= 2)) || usage
cmd=$1 engine=$2
shift 2
# SUITE is the Debian suite of the root filesystem; DOCKERD_FLAGS are the
# engine's own.
DOCKERD_FLAGS=()
case $engine in
sid | trixie) SUITE=$engine ;;
sid-nft)
	SUITE=sid
	DOCKERD_FLAGS=(--iptables=false --ip6tables=false --data-root "/var/lib/docker-$engine")
	;;
*) die "unknown engine $engine: want sid, trixie or sid-nft" ;;
esac
[[ $EUID -eq 0 ]] || die "must run as root"

CACHE=${MYNET_ENGINE_CACHE:-/var/cache/mynet/engines}
MIRROR=${MYNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/$SUITE              # the root filesystem
RUN=/run/mynet-engine/$engine   # pids, socket, plugins; shared with the engine
NETNS=mynet-$engine             # /run/netns/$NETNS
CGROUP=mynet-$engine            # --cgroup-parent of the engine's containers
SOCK=$RUN/docker.sock
# Paths inside the engine's root.
IN_RUN=/run/mynet-engine
PACKAGES=docker.io,docker-cli,containerd,runc,iptables,iproute2,ca-certificates
IPTABLES_TOOLS=(iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore)

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
answers() { [[ -S $SOCK ]] && timeout 5 docker -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# ensure_rootfs debootstraps the root filesystem once; a finished one carries
# a marker, so an interrupted build is redone rather than used.
ensure_rootfs() {
	[[ -e $ROOT/.mynet-complete ]] && return 0
	command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
	mkdir -p "$CACHE"
	rm -rf "$ROOT.tmp"
	say "debootstrap $SUITE into $ROOT (about a minute; log $CACHE/$SUITE.debootstrap.log)"
	local t0=$SECONDS
	if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.tmp" "$MIRROR" \
		>"$CACHE/$SUITE.debootstrap.log" 2>&1; then
		tail -n 20 "$CACHE/$SUITE.debootstrap.log" >&2
		die "debootstrap failed"
	fi
	chroot "$ROOT.tmp" apt-get clean
	# The host's resolver (debootstrap copies its resolv.conf) is of no use
	# in a namespace with no way out, and is not the engine's business.
	: >"$ROOT.tmp/etc/resolv.conf"
	touch "$ROOT.tmp/.mynet-complete"
	rm -rf "$ROOT"
	mv "$ROOT.tmp" "$ROOT"
	say "debootstrap took $((SECONDS - t0)) s"
}

# inner runs in the new mount namespace, already in the engine's network
# namespace: it builds the engine's view, pivots into the root filesystem
# and runs dockerd (which starts its own containerd) until it exits.
inner() {
	mount --bind "$ROOT" "$ROOT"
	mount -t proc proc "$ROOT/proc"
	mount -t sysfs sysfs "$ROOT/sys" # from the engine's network namespace
	mount --rbind /sys/fs/cgroup "$ROOT/sys/fs/cgroup"
	mount --rbind /dev "$ROOT/dev"
	mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
	mkdir -p "$ROOT/run/docker/plugins" "$ROOT$IN_RUN" "$ROOT/tmp"
	# iptables-nft never makes the xtables lock, but plugins (mynet's
	# managed one) mount it from the engine's /run.
	touch "$ROOT/run/xtables.lock"
	mount --bind "$RUN" "$ROOT$IN_RUN"
	mount --bind "$RUN/plugins" "$ROOT/run/docker/plugins"
	# The host's /tmp, so that a path a command run with `exec` makes there
	# (a managed plugin's mount source, a test's directory) means the same
	# file to the engine.
	mount --rbind /tmp "$ROOT/tmp"
	cd "$ROOT"
	mkdir -p .oldroot
	pivot_root . .oldroot
	umount -l /.oldroot
	rmdir /.oldroot
	cd /
	export PATH=/usr/sbin:/usr/bin:/sbin:/bin
	exec dockerd -H "unix://$IN_RUN/docker.sock" --pidfile /run/docker.pid \
		--cgroup-parent "/$CGROUP" "${DOCKERD_FLAGS[@]}" >>"$IN_RUN/dockerd.log" 2>&1
}

up() {
	if alive "$(pid_of dockerd)" && answers; then
		echo "DOCKER_HOST=unix://$SOCK"
		return 0
	fi
	down_quiet # a half-started or crashed engine: start afresh
	ensure_rootfs
	local t0
	t0=$(date +%s%3N)
	mkdir -p "$RUN/plugins" "$RUN/bin"
	for tool in "${IPTABLES_TOOLS[@]}"; do
		# In the engine's root, so that it shares the engine's xtables lock.
		printf '#!/bin/sh\nexec chroot /proc/$(cat %s)/root /usr/sbin/%s "$@"\n' "$RUN/dockerd.pid" "$tool" >"$RUN/bin/$tool"
		chmod +x "$RUN/bin/$tool"
	done
	ip netns add "$NETNS"
	ip -n "$NETNS" link set lo up
	# The mount namespace is made in the host's network namespace, then
	# joined to the engine's: `ip netns exec` would remount /sys and lose the
	# cgroup mounts dockerd needs.
	# None of our descriptors beyond 0-2 go to the engine: run as `flock
	# LOCK make test`, it would otherwise hold LOCK for its whole life.
	(
		for fd in "/proc/$BASHPID/fd/"*; do
			fd=${fd##*/}
			((fd > 2)) && eval "exec $fd>&-"
		done
		exec setsid unshare -m --propagation private -- nsenter --net="/run/netns/$NETNS" -- \
			"$SELF" _inner "$engine" </dev/null >>"$RUN/dockerd.log" 2>&1
	) &
	echo $! >"$RUN/dockerd.pid" # each of these execs the next, so this is dockerd's pid
	for _ in $(seq 100); do
		answers && break
		alive "$(pid_of dockerd)" || break
		sleep 0.1
	done
	if ! answers; then
		tail -n 20 "$RUN/dockerd.log" >&2 || true
		down_quiet
		die "the $engine engine did not answer within 10 s"
	fi
	# For down, should dockerd be gone and something of it be left.
	readlink "/proc/$(pid_of dockerd)/ns/mnt" >"$RUN/mntns"
	say "engine $engine up in $(($(date +%s%3N) - t0)) ms; log $RUN/dockerd.log"
	echo "DOCKER_HOST=unix://$SOCK"
}

# exec_in runs "$@" in the engine's network namespace and a mount namespace
# of its own that is the host's with the engine's plugin directory and a
# sysfs of the engine's network namespace.
exec_in() {
	(($#)) || usage
	alive "$(pid_of dockerd)" || die "engine $engine is not up: run $0 up $engine"
	exec nsenter --net="/run/netns/$NETNS" -- unshare -m --propagation private -- /bin/bash -c '
		set -e
		run=$1 cg=$(mktemp -d)
		shift
		mount --rbind /sys/fs/cgroup "$cg"
		mount -t sysfs sysfs /sys
		mount --move "$cg" /sys/fs/cgroup
		rmdir "$cg"
		mkdir -p /run/docker/plugins
		mount --bind "$run/plugins" /run/docker/plugins
		# The host engine'"'"'s socket and pid file stay out of reach: a tool
		# that finds dockerd by them would act on the wrong engine.
		for f in /run/docker.sock /run/docker.pid /run/containerd/containerd.sock; do
			if [[ -e $f ]]; then mount --bind /dev/null "$f"; fi
		done
		PATH=$run/bin:$PATH exec "$@"' engine-exec "$RUN" "$@"
}

# stop sends SIGTERM to pid and waits up to $2 seconds, then SIGKILL.
stop() {
	local pid=$1 wait=$2
	alive "$pid" || return 0
	kill "$pid" 2>/dev/null || true
	for _ in $(seq $((wait * 10))); do
		alive "$pid" || return 0
		sleep 0.1
	done
	say "pid $pid did not stop in $wait s: killing it"
	kill -9 "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		alive "$pid" || return 0
		sleep 0.1
	done
}

# cgroup_pids prints the processes in the engine's cgroup-parent: its
# containers' processes, which it started.
cgroup_pids() {
	find /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP" -name cgroup.procs \
		-exec cat {} + 2>/dev/null | sort -u
}

# rm_cgroups kills what is left in the cgroup-parent (containers of an
# engine that died) and removes its directories, deepest first.
rm_cgroups() {
	local d p
	for p in $(cgroup_pids); do
		say "killing leftover $p ($(cat "/proc/$p/comm" 2>/dev/null)) of a container"
		kill -9 "$p" 2>/dev/null || true
	done
	for _ in $(seq 50); do
		[[ -z $(cgroup_pids) ]] && break
		sleep 0.1
	done
	for d in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do
		[[ -d $d ]] || continue
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $d ]] && say "cgroup $d is still there"
	done
	return 0
}

down_quiet() {
	local pid mntns p
	pid=$(pid_of dockerd)
	mntns=$(cat "$RUN/mntns" 2>/dev/null || true)
	if alive "$pid"; then
		# Killed, not stopped: dockerd gives each container 10 s to exit on
		# SIGTERM, and a test's `sleep` as PID 1 never does.
		if answers; then
			docker -H "unix://$SOCK" ps -aq | xargs -r docker -H "unix://$SOCK" rm -f >/dev/null || true
		fi
		# dockerd stops its containers and its containerd before it exits.
		stop "$pid" 30
	fi
	# Anything left in the engine's mount namespace (a shim, a container's
	# process) was started by it.
	if [[ -n $mntns ]]; then
		for p in /proc/[0-9]*; do
			[[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$mntns" ]] || continue
			say "killing leftover ${p#/proc/} ($(cat "$p/comm" 2>/dev/null))"
			kill -9 "${p#/proc/}" 2>/dev/null || true
		done
	fi
	rm_cgroups
	if [[ -e /run/netns/$NETNS ]]; then
		ip netns del "$NETNS"
	fi
	rm -rf "$RUN"
	rmdir "${RUN%/*}" 2>/dev/null || true
}

case $cmd in
up) up ;;
exec) exec_in "$@" ;;
down)
	down_quiet
	say "engine $engine down"
	;;
_inner) inner ;;
*) usage ;;
esac
