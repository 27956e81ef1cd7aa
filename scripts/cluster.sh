#!/usr/bin/env bash
# Several Docker "hosts" and one etcd on this machine, for the multi-host
# (issue 14) tests and for manual use. The interface is a contract; other
# tooling drives it:
#
#   scripts/cluster.sh up [N]     N = 2 or 3 hosts (default 2), named a, b, c.
#                                 Starts what is not running (idempotent;
#                                 hosts beyond N are stopped) and prints, on
#                                 stdout and nothing else, one line per host
#                                   host <letter>: DOCKER_HOST=unix://<socket> netns=<namespace>
#                                 then one line
#                                   etcd: <endpoint> pid=<pid>
#   scripts/cluster.sh down       removes everything up made, by PID and by
#                                 name, also after a kill -9 of up or of any
#                                 daemon
#   scripts/cluster.sh exec LETTER CMD [ARGS...]
#                                 runs CMD as host LETTER's processes run:
#                                 in its network namespace, with its
#                                 /run/docker/plugins and /etc/docker
#   scripts/cluster.sh mynet LETTER stop|start|restart
#                                 stops or starts only host LETTER's mynet
#                                 (by PID; start with the flags it last ran
#                                 with), leaving its dockerd and kernel
#                                 state alone: for restart scenarios
#
# The layout:
#   - the underlay: a bridge in namespace mynet-cluster-ul; each host and etcd
#     has a veth `ul0` on it, with an address of 198.19.77.0/24 (benchmarking
#     space; never 192.0.2.0/24, this machine's uplink). No namespace has a
#     route out: nothing a test sends leaves the machine.
#   - etcd: Debian's etcd-server binary (see ensure_etcd for why), in
#     namespace mynet-cluster-etcd at 198.19.77.2, its data on a tmpfs.
#     $BASE/etcd/etcdctl runs Debian's etcdctl (API v3).
#   - per host X: namespace mynet-cluster-X, address 198.19.77.1N; a holder
#     process whose mount namespace gives X a private /run/docker/plugins
#     and /etc/docker (so that X's engine finds only X's plugins and has an
#     engine ID of its own); in it, X's mynet (serving the name `mynet`) and
#     X's dockerd: this machine's dockerd binary with its own data root,
#     exec root, pid file and socket under $BASE/X, sharing this machine's
#     containerd under containerd namespace mynet-cluster-X, as moby's own
#     integration daemons do.
#
# $BASE is a shared bind mount, so that what X's dockerd mounts under its
# data and exec roots (container root filesystems, sandbox namespaces)
# reaches the host's mount namespace, where containerd and runc run; only
# the plugin directory and /etc/docker are private to the holder.
#
# Environment:
#   MYNET_BIN                  the mynet binary (default: make build, then
#                              bin/mynet of this checkout)
#   MYNET_CLUSTER_SERVE_ARGS   extra flags for every host's `mynet serve`;
#                              {host}, {vtep}, {etcd} become the host's
#                              letter, its underlay address and etcd's
#                              endpoint (host:port). A host whose mynet runs
#                              with other flags is restarted by up.
#   MYNET_CLUSTER_LOCK         lock held while up or down runs (default
#                              /tmp/mynet-docker.lock, shared with the e2e
#                              suite; "off": none). Not taken again when an
#                              ancestor (flock LOCK go test ...) holds it.
#   MYNET_ETCD_BIN             an etcd binary to use instead of Debian's
#                              (etcdctl is taken from beside it)
#   MYNET_CLUSTER_CACHE        where Debian's etcd is kept (default
#                              /var/cache/mynet/etcd)
set -euo pipefail

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}
usage() { die "usage: $0 up [2|3] | down | exec LETTER CMD [ARGS...] | mynet LETTER stop|start|restart"; }

SELF=$(readlink -f "$0")
REPO=$(dirname "$(dirname "$SELF")")
BASE=/run/mynet-cluster
PREFIX=mynet-cluster       # namespaces, cgroups, containerd namespaces
UL_NS=$PREFIX-ul
ETCD_NS=$PREFIX-etcd
SUBNET_PREFIX=198.19.77    # /24, inside 198.18.0.0/15
ETCD_ADDR=$SUBNET_PREFIX.2
ETCD_EP=$ETCD_ADDR:2379
LETTERS=(a b c)
CONTAINERD_SOCK=/run/containerd/containerd.sock
CACHE=${MYNET_CLUSTER_CACHE:-/var/cache/mynet/etcd}

host_ns() { echo "$PREFIX-$1"; }
host_dir() { echo "$BASE/$1"; }
host_addr() {
	local i
	for i in "${!LETTERS[@]}"; do
		[[ ${LETTERS[i]} == "$1" ]] && echo "$SUBNET_PREFIX.$((11 + i))" && return
	done
	die "unknown host $1: want one of ${LETTERS[*]}"
}

# Processes are recorded as "PID STARTTIME": a PID alone may name another
# process after a reboot (/run is not always a tmpfs) or a late reap.
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || true; }
record() { echo "$2 $(starttime "$2")" >"$1"; }
# alive PIDFILE: the recorded process still runs (a zombie does not: PID 1
# reaps orphans late here, and kill -0 still sees them meanwhile).
alive() {
	local pid st state
	[[ -r $1 ]] && read -r pid st <"$1" || return 1
	[[ -n $pid && -n $st && $(starttime "$pid") == "$st" ]] || return 1
	state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
	[[ -n $state && $state != Z ]]
}
pid_in() { awk '{print $1}' "$1" 2>/dev/null || true; }

# stop PIDFILE SECONDS: TERM, then KILL after SECONDS.
stop() {
	local f=$1 wait=$2 pid
	alive "$f" || {
		rm -f "$f"
		return 0
	}
	pid=$(pid_in "$f")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq $((wait * 10))); do
		alive "$f" || break
		sleep 0.1
	done
	if alive "$f"; then
		say "pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) did not stop in $wait s: killing it"
		kill -9 "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			alive "$f" || break
			sleep 0.1
		done
	fi
	rm -f "$f"
}

# spawn PIDFILE LOG CMD...: starts CMD in a session of its own, with none of
# our descriptors beyond 0-2 (run as `flock LOCK ...`, a daemon would
# otherwise hold LOCK for its whole life). setsid and nsenter exec, so the
# recorded PID is CMD's.
spawn() {
	local pidfile=$1 log=$2
	shift 2
	(
		for fd in "/proc/$BASHPID/fd/"*; do
			fd=${fd##*/}
			((fd > 2)) && eval "exec $fd>&-"
		done
		cd /
		exec setsid "$@" </dev/null >>"$log" 2>&1
	) &
	record "$pidfile" $!
}

# wait_for SECONDS PIDFILE CMD...: until CMD succeeds; fails early when the
# process of PIDFILE dies.
wait_for() {
	local n=$(($1 * 10)) pidfile=$2
	shift 2
	for _ in $(seq "$n"); do
		"$@" >/dev/null 2>&1 && return 0
		alive "$pidfile" || return 1
		sleep 0.1
	done
	return 1
}

# ---- locking ---------------------------------------------------------------

# ancestor_holds LOCK: a flock on LOCK is held by one of our ancestors.
ancestor_holds() {
	local id pid holders
	id=$(stat -L -c '%Hd %Ld %i' "$1" | awk '{printf "%02x:%02x:%d", $1, $2, $3}')
	holders=" $(awk -v id="$id" '$2 == "FLOCK" && $6 == id {print $5}' /proc/locks | tr '\n' ' ') "
	pid=$PPID
	while ((pid > 1)); do
		[[ $holders == *" $pid "* ]] && return 0
		pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || echo 0)
	done
	return 1
}

take_lock() {
	local lock=${MYNET_CLUSTER_LOCK:-/tmp/mynet-docker.lock}
	[[ $lock == off ]] && return 0
	exec 9>>"$lock"
	flock -n 9 && return 0
	ancestor_holds "$lock" && return 0
	say "waiting for $lock (another e2e run holds it)"
	flock -w 1800 9 || die "$lock: still held after 30 minutes"
}

# ---- etcd ------------------------------------------------------------------

# ensure_etcd_bin sets ETCD and ETCDCTL. Debian's etcd-server, extracted
# rather than installed (its package starts a service), over an embedded
# etcd in a nested module: no Go build of 126 modules (about 50 s cold),
# nothing in mynet's go.mod or go.sum beyond the client, a server that is
# not the client's own code (3.4.23 on bookworm; a 3.7 client speaks KV,
# leases and watches to it), and a download of 13 MB once, cached.
# MYNET_ETCD_BIN takes a newer server when a test needs one.
ensure_etcd_bin() {
	if [[ -n ${MYNET_ETCD_BIN:-} ]]; then
		ETCD=$MYNET_ETCD_BIN ETCDCTL=$(dirname "$MYNET_ETCD_BIN")/etcdctl
		[[ -x $ETCD && -x $ETCDCTL ]] || die "MYNET_ETCD_BIN=$ETCD: want an executable etcd with etcdctl beside it"
		return 0
	fi
	local root=$CACHE/root tmp
	ETCD=$root/usr/bin/etcd ETCDCTL=$root/usr/bin/etcdctl
	[[ -x $ETCD && -x $ETCDCTL ]] && return 0
	say "fetching Debian's etcd-server and etcd-client into $CACHE"
	tmp=$(mktemp -d)
	if ! (cd "$tmp" && apt-get download etcd-server etcd-client) >"$tmp/apt.log" 2>&1; then
		cat "$tmp/apt.log" >&2
		rm -rf "$tmp"
		die "apt-get download etcd-server etcd-client failed (apt-get update first?), or set MYNET_ETCD_BIN"
	fi
	mkdir -p "$tmp/root"
	for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
	mkdir -p "$CACHE"
	rm -rf "$root"
	mv "$tmp/root" "$root"
	rm -rf "$tmp"
	[[ -x $ETCD && -x $ETCDCTL ]] || die "no etcd/etcdctl in Debian's packages under $root"
}

etcd_healthy() {
	ETCDCTL_API=3 nsenter --net="/run/netns/$ETCD_NS" -- \
		"$BASE/etcd/etcdctl" --endpoints="http://$ETCD_EP" --dial-timeout=1s --command-timeout=2s endpoint health
}

ensure_etcd() {
	local d=$BASE/etcd
	if alive "$d/etcd.pid" && etcd_healthy >/dev/null 2>&1; then
		return 0
	fi
	stop "$d/etcd.pid" 5
	ensure_etcd_bin
	ensure_member "$ETCD_NS" "$ETCD_ADDR" etcd
	mkdir -p "$d/data"
	mountpoint -q "$d/data" || mount -t tmpfs -o size=512m,mode=0700 tmpfs "$d/data"
	ln -sfn "$ETCDCTL" "$d/etcdctl"
	# One member; the peer URL stays on loopback. The lease checkpoint keeps
	# a lease's remaining TTL across leader changes (multihost.md).
	spawn "$d/etcd.pid" "$d/etcd.log" nsenter --net="/run/netns/$ETCD_NS" -- "$ETCD" \
		--name "$PREFIX" --data-dir "$d/data/member" \
		--listen-client-urls "http://$ETCD_EP,http://127.0.0.1:2379" \
		--advertise-client-urls "http://$ETCD_EP" \
		--listen-peer-urls http://127.0.0.1:2380 \
		--initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "$PREFIX=http://127.0.0.1:2380" \
		--experimental-enable-lease-checkpoint \
		--logger zap --log-outputs stderr
	if ! wait_for 20 "$d/etcd.pid" etcd_healthy; then
		tail -n 20 "$d/etcd.log" >&2 || true
		die "etcd did not become healthy within 20 s (log $d/etcd.log)"
	fi
}

# ---- underlay --------------------------------------------------------------

ensure_underlay() {
	if [[ ! -e /run/netns/$UL_NS ]]; then
		ip netns add "$UL_NS"
	fi
	ip -n "$UL_NS" link set lo up
	ip -n "$UL_NS" link show br0 >/dev/null 2>&1 || ip -n "$UL_NS" link add br0 type bridge
	ip -n "$UL_NS" link set br0 up
}

# ensure_member NS ADDR NAME: namespace NS with veth ul0 (ADDR/24) on the
# underlay bridge, whose port is ul-NAME.
ensure_member() {
	local ns=$1 addr=$2 port=ul-$3
	[[ -e /run/netns/$ns ]] || ip netns add "$ns"
	ip -n "$ns" link set lo up
	if ! ip -n "$ns" link show ul0 >/dev/null 2>&1; then
		ip -n "$UL_NS" link del "$port" 2>/dev/null || true
		ip -n "$UL_NS" link add "$port" type veth peer name ul0 netns "$ns"
	fi
	ip -n "$UL_NS" link set "$port" master br0 up
	ip -n "$ns" addr replace "$addr/24" dev ul0
	ip -n "$ns" link set ul0 up
}

# ---- hosts -----------------------------------------------------------------

# holder runs in the host's new mount namespace (a copy of ours; $BASE stays
# shared with ours) and network namespace: it binds the host's private
# directories and then only keeps the mount namespace alive.
holder() {
	local d=$1
	# Mounts made on a shared parent would reach our mount namespace: make
	# the parents of the two targets slaves here (non-recursively, so $BASE
	# stays shared). On this machine / is private anyway; on a systemd host
	# it is shared.
	local cg t
	mkdir -p /run/docker/plugins /etc/docker
	cg=$(mktemp -d)
	for t in /run/docker/plugins /etc/docker /sys "$cg"; do
		mount --make-slave "$(findmnt -n -o TARGET -T "$t")"
	done
	mount --bind "$d/plugins" /run/docker/plugins
	mount --make-private /run/docker/plugins
	mount --bind "$d/etc-docker" /etc/docker
	mount --make-private /etc/docker
	# A sysfs of this network namespace (as `ip netns exec` does), keeping
	# the cgroup mounts dockerd needs. /sys is not under $BASE.
	mount --rbind /sys/fs/cgroup "$cg"
	mount -t sysfs sysfs /sys
	mount --move "$cg" /sys/fs/cgroup
	rmdir "$cg"
	touch "$d/holder.ready"
	exec sleep infinity
}

# in_host LETTER CMD...: runs CMD in host LETTER's namespaces.
in_host() {
	local d
	d=$(host_dir "$1")
	shift
	alive "$d/holder.pid" || die "host ${d##*/} is not up: run $0 up"
	exec nsenter -t "$(pid_in "$d/holder.pid")" -m -n -- "$@"
}

docker_answers() { [[ -S $1/docker.sock ]] && timeout 5 docker -H "unix://$1/docker.sock" version --format '{{.Server.Version}}'; }

# serve_args LETTER: mynet's command line for the host.
serve_args() {
	local h=$1 extra=${MYNET_CLUSTER_SERVE_ARGS:-} addr
	addr=$(host_addr "$h")
	extra=${extra//\{host\}/$h}
	extra=${extra//\{vtep\}/$addr}
	extra=${extra//\{etcd\}/$ETCD_EP}
	# Cluster mode (issue 14); MYNET_CLUSTER_SERVE_ARGS adds to it (a flag
	# given again there wins: Go's flag package keeps the last).
	echo "$MYNET serve --name mynet --state-dir $(host_dir "$h")/state --log-level debug" \
		"--cluster-store etcd://$ETCD_EP --vtep-addr $addr --host-id $PREFIX-$h $extra"
}

host_up() {
	local h=$1 d ns args
	d=$(host_dir "$h") ns=$(host_ns "$h")
	args=$(serve_args "$h")
	if alive "$d/holder.pid" && alive "$d/mynet.pid" && alive "$d/dockerd.pid" && docker_answers "$d" >/dev/null 2>&1; then
		[[ $(cat "$d/mynet.args" 2>/dev/null) == "$args" ]] && return 0
		say "host $h: restarting mynet with new flags"
		stop "$d/mynet.pid" 10
		start_mynet "$h" "$args"
		return 0
	fi
	# Half started, partly dead, or left by a killed down: afresh.
	if [[ -e $d || -e /run/netns/$ns ]]; then host_down "$h"; fi
	local t0
	t0=$(date +%s%3N)
	ensure_member "$ns" "$(host_addr "$h")" "$h"
	mkdir -p "$d/plugins" "$d/etc-docker" "$d/data" "$d/exec" "$d/state"
	echo '{}' >"$d/daemon.json" # --config-file /dev/null is refused
	spawn "$d/holder.pid" "$d/holder.log" unshare -m --propagation unchanged -- \
		nsenter --net="/run/netns/$ns" -- "$SELF" _holder "$d"
	wait_for 10 "$d/holder.pid" test -e "$d/holder.ready" || die "host $h: the namespace holder did not start (log $d/holder.log)"
	start_mynet "$h" "$args"
	# Docker's flags as moby's integration daemons use them
	# (internal/testutil/daemon), plus a cgroup parent of the host's own.
	spawn "$d/dockerd.pid" "$d/dockerd.log" nsenter -t "$(pid_in "$d/holder.pid")" -m -n -- \
		dockerd --config-file "$d/daemon.json" \
		--data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pidfile" \
		-H "unix://$d/docker.sock" --containerd "$CONTAINERD_SOCK" \
		--containerd-namespace "$ns" --containerd-plugins-namespace "$ns-plugins" \
		--cgroup-parent "/$ns"
	if ! wait_for 30 "$d/dockerd.pid" docker_answers "$d"; then
		tail -n 20 "$d/dockerd.log" >&2 || true
		die "host $h: dockerd did not answer within 30 s (log $d/dockerd.log)"
	fi
	say "host $h up in $(($(date +%s%3N) - t0)) ms (docker $(docker_answers "$d")); logs in $d"
}


start_mynet() {
	local h=$1 args=$2 d
	d=$(host_dir "$h")
	rm -f "$d/plugins/mynet.sock"
	# shellcheck disable=SC2086 # args is a flag list
	spawn "$d/mynet.pid" "$d/mynet.log" nsenter -t "$(pid_in "$d/holder.pid")" -m -n -- $args
	echo "$args" >"$d/mynet.args"
	if ! wait_for 15 "$d/mynet.pid" test -S "$d/plugins/mynet.sock"; then
		tail -n 20 "$d/mynet.log" >&2 || true
		die "host $h: mynet did not serve $d/plugins/mynet.sock within 15 s (log $d/mynet.log)"
	fi
}

# mynet_ctl LETTER stop|start|restart: host LETTER's mynet alone.
mynet_ctl() {
	local h=$1 op=$2 d args
	d=$(host_dir "$h")
	alive "$d/holder.pid" || die "host $h is not up: run $0 up"
	args=$(cat "$d/mynet.args" 2>/dev/null) || die "host $h: no $d/mynet.args: run $0 up"
	case $op in
	stop) stop "$d/mynet.pid" 10 ;;
	start) alive "$d/mynet.pid" || start_mynet "$h" "$args" ;;
	restart)
		stop "$d/mynet.pid" 10
		start_mynet "$h" "$args"
		;;
	*) usage ;;
	esac
}

# ---- down ------------------------------------------------------------------

# host_down LETTER: stops host LETTER by PID, then removes by name whatever
# of it is left (after a kill -9 of up or of dockerd).
host_down() {
	local h=$1 d ns
	d=$(host_dir "$h") ns=$(host_ns "$h")
	if alive "$d/dockerd.pid" && docker_answers "$d" >/dev/null 2>&1; then
		# dockerd gives each running container 10 s on SIGTERM; a test's
		# `sleep` as PID 1 never exits on it.
		docker -H "unix://$d/docker.sock" ps -aq | xargs -r docker -H "unix://$d/docker.sock" rm -f >/dev/null 2>&1 || true
	fi
	stop "$d/dockerd.pid" 20
	stop "$d/mynet.pid" 10
	stop "$d/holder.pid" 5
	kill_leftovers "$h"
	clean_containerd "$ns"
	clean_cgroups "$ns"
	[[ -e /run/netns/$ns ]] && ip netns del "$ns"
	ip -n "$UL_NS" link del "ul-$h" 2>/dev/null || true
	unmount_under "$d"
	[[ -e $d ]] && rm -rf --one-file-system "$d"
	return 0
}

# kill_leftovers LETTER kills, by name, what is left of host LETTER: any
# process in its network namespace (its daemons and holder, a shell someone
# opened there), containerd shims of its containerd namespaces, and its
# containers' processes (in its cgroup parent). Builtins only in the loop:
# a fork per process would make down take seconds.
kill_leftovers() {
	local h=$1 ns p pid pids=() self_anc argv cg shim_re cg_re
	ns=$(host_ns "$h")
	shim_re=" -namespace $ns(-plugins)? " cg_re=":/$ns(/| )"
	self_anc=" $$ $(ancestors) "
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		[[ $self_anc == *" $pid "* ]] && continue
		if [[ -e /run/netns/$ns && $p/ns/net -ef /run/netns/$ns ]]; then
			pids+=("$pid")
			continue
		fi
		mapfile -d '' -t argv 2>/dev/null <"$p/cmdline" || continue
		if [[ " ${argv[*]} " =~ $shim_re ]]; then
			pids+=("$pid")
			continue
		fi
		mapfile -t cg 2>/dev/null <"$p/cgroup" || continue
		if [[ " ${cg[*]} " =~ $cg_re ]]; then pids+=("$pid"); fi
	done
	((${#pids[@]})) || return 0
	for pid in "${pids[@]}"; do
		say "host $h: killing leftover $pid ($(cat "/proc/$pid/comm" 2>/dev/null))"
	done
	kill -9 "${pids[@]}" 2>/dev/null || true
	local state left
	for _ in $(seq 50); do
		left=0
		for pid in "${pids[@]}"; do
			state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
			[[ -n $state && $state != Z ]] && left=1
		done
		((left)) || break
		sleep 0.1
	done
}

ancestors() {
	local pid=$PPID
	while ((pid > 1)); do
		printf '%s ' "$pid"
		pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || echo 0)
	done
}

# clean_containerd NS removes containerd namespaces NS and NS-plugins with
# what is in them (what a dockerd killed with -9 leaves), and the task
# directories containerd keeps for them.
clean_containerd() {
	local ns
	timeout 5 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 || return 0
	for ns in "$1" "$1-plugins"; do
		ctr --address "$CONTAINERD_SOCK" namespaces ls -q | grep -qx "$ns" || continue
		local c=(ctr --address "$CONTAINERD_SOCK" -n "$ns")
		"${c[@]}" tasks ls -q | xargs -r -n1 "${c[@]}" tasks kill -s SIGKILL >/dev/null 2>&1 || true
		"${c[@]}" tasks ls -q | xargs -r -n1 "${c[@]}" tasks rm -f >/dev/null 2>&1 || true
		"${c[@]}" containers ls -q | xargs -r "${c[@]}" containers rm >/dev/null 2>&1 || true
		"${c[@]}" images ls -q | xargs -r "${c[@]}" images rm >/dev/null 2>&1 || true
		"${c[@]}" leases ls -q | xargs -r "${c[@]}" leases rm >/dev/null 2>&1 || true
		"${c[@]}" snapshots ls 2>/dev/null | awk 'NR > 1 {print $1}' | xargs -r "${c[@]}" snapshots rm >/dev/null 2>&1 || true
		"${c[@]}" content ls -q | xargs -r "${c[@]}" content rm >/dev/null 2>&1 || true
		ctr --address "$CONTAINERD_SOCK" namespaces rm "$ns" >/dev/null 2>&1 ||
			say "containerd namespace $ns is not empty: $(ctr --address "$CONTAINERD_SOCK" namespaces rm "$ns" 2>&1)"
	done
	rm -rf /run/containerd/io.containerd.runtime.v2.task/"$1" /run/containerd/io.containerd.runtime.v2.task/"$1-plugins" \
		/var/lib/containerd/io.containerd.runtime.v2.task/"$1" /var/lib/containerd/io.containerd.runtime.v2.task/"$1-plugins"
}

clean_cgroups() {
	local d
	for d in /sys/fs/cgroup/*/"$1" /sys/fs/cgroup/"$1"; do
		[[ -d $d ]] || continue
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $d ]] && say "cgroup $d is still there"
	done
	return 0
}

# unmount_under DIR: every mount at or below DIR, deepest first. A host's
# mounts fan out into our namespace through the shared $BASE, sometimes
# twice; each round takes the current list again.
unmount_under() {
	local dir=$1 m
	for _ in $(seq 10); do
		mapfile -t ms < <(findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1' | sort -r)
		((${#ms[@]})) || return 0
		for m in "${ms[@]}"; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
	say "still mounted under $dir: $(findmnt -rn -o TARGET | grep -F "$dir" | tr '\n' ' ')"
}

down() {
	local h ns
	# By name: every host namespace, also one of a larger earlier up.
	for h in "${LETTERS[@]}"; do
		ns=$(host_ns "$h")
		[[ -e $(host_dir "$h") || -e /run/netns/$ns ]] && host_down "$h"
		clean_containerd "$ns" # a dockerd killed before up recorded it
	done
	stop "$BASE/etcd/etcd.pid" 10
	if [[ -e /run/netns/$ETCD_NS ]]; then
		for p in /proc/[0-9]*; do
			[[ $p/ns/net -ef /run/netns/$ETCD_NS ]] || continue
			say "killing leftover ${p#/proc/} ($(cat "$p/comm" 2>/dev/null)) in $ETCD_NS"
			kill -9 "${p#/proc/}" 2>/dev/null || true
		done
	fi
	for ns in "$ETCD_NS" "$UL_NS"; do
		[[ -e /run/netns/$ns ]] && ip netns del "$ns"
	done
	unmount_under "$BASE"
	[[ -e $BASE ]] && rm -rf --one-file-system "$BASE"
	return 0
}

# ---- up --------------------------------------------------------------------

up() {
	local n=$1 i h t0
	t0=$(date +%s%3N)
	command -v dockerd >/dev/null || die "dockerd not found (apt-get install docker.io)"
	timeout 5 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 ||
		die "containerd does not answer on $CONTAINERD_SOCK: the hosts share this machine's containerd (start it, as scripts/test.sh does)"
	if [[ -z ${MYNET_BIN:-} ]]; then
		make -s -C "$REPO" build >&2 || die "make build failed"
		MYNET=$REPO/bin/mynet
	else
		MYNET=$(readlink -f "$MYNET_BIN")
	fi
	[[ -x $MYNET ]] || die "mynet binary $MYNET is not executable (make build, or set MYNET_BIN)"
	mkdir -p "$BASE"
	if ! mountpoint -q "$BASE"; then
		mount --bind "$BASE" "$BASE"
	fi
	mount --make-shared "$BASE"
	ensure_underlay
	ensure_etcd
	for i in "${!LETTERS[@]}"; do
		h=${LETTERS[i]}
		if ((i < n)); then
			host_up "$h"
		elif [[ -e $(host_dir "$h") || -e /run/netns/$(host_ns "$h") ]]; then
			say "host $h: beyond N=$n, stopping it"
			host_down "$h"
		fi
	done
	say "cluster of $n up in $(($(date +%s%3N) - t0)) ms"
	for ((i = 0; i < n; i++)); do
		h=${LETTERS[i]}
		echo "host $h: DOCKER_HOST=unix://$(host_dir "$h")/docker.sock netns=$(host_ns "$h")"
	done
	echo "etcd: http://$ETCD_EP pid=$(pid_in "$BASE/etcd/etcd.pid")"
}

[[ $EUID -eq 0 ]] || die "must run as root"
(($#)) || usage
cmd=$1
shift
case $cmd in
up)
	n=${1:-2}
	[[ $n == 2 || $n == 3 ]] || die "up $n: want 2 or 3 hosts"
	take_lock
	up "$n"
	;;
down)
	(($# == 0)) || usage
	take_lock
	t0=$(date +%s%3N)
	down
	say "down in $(($(date +%s%3N) - t0)) ms"
	;;
exec)
	(($# >= 2)) || usage
	host_addr "$1" >/dev/null
	h=$1
	shift
	in_host "$h" "$@"
	;;
mynet)
	(($# == 2)) || usage
	host_addr "$1" >/dev/null
	take_lock
	mynet_ctl "$1" "$2"
	;;
_holder) holder "$1" ;;
*) usage ;;
esac
