#!/usr/bin/env bash
# vxlan-perf.sh: the cluster phase's data-plane path without dockerd, to
# profile where cross-host traffic spends its time (issue 14's targets).
#
#   scripts/vxlan-perf.sh up       # build the namespaces below
#   scripts/vxlan-perf.sh run      # netbench same-host and cross-host, pinned
#   scripts/vxlan-perf.sh down     # remove everything it made, by name
#
# Layout, all namespaces named x1p-*, addresses of benchmarking space only:
#   x1p-ul  underlay bridge br0 (like cluster.sh's mynet-cluster-ul)
#   x1p-a, x1p-b  "hosts": ul0 198.19.78.1/.2 on the underlay; bridge mn0
#                 10.78.0.1/24; VXLAN mnx42 (id 42, port 8472, nolearning,
#                 proxy, MTU 1450) on mn0; the rules mynet and Docker load
#                 into a host (conntrack in FORWARD, MASQUERADE, the VTEP
#                 filter on INPUT)
#   x1p-a1, x1p-a2 on host a (10.78.0.2, .3), x1p-b1 on host b (10.78.0.4)
# Server in x1p-a1; same-host client in x1p-a2, cross-host in x1p-b1, all
# pinned to one CPU (CPU env, default 1) like the bench's phase.
#
# Knobs (env): GRO=1 turns GRO on for the underlay veths; NOTRACK=1 adds a
# raw-table NOTRACK for the VXLAN port between the VTEPs; BRNF=0 sets
# bridge-nf-call-iptables=0 in the hosts; PERF=1 records perf -a -g for
# each cross-host stream (/tmp/x1p-perf-*.data).
# Run heavy measurements under flock /tmp/mynet-docker.lock.
set -euo pipefail

NB=${NB:-bin/netbench}
CPU=${CPU:-1}
DUR=${DUR:-5s}
TRIALS=${TRIALS:-3}
P=x1p
PORT=8472

x() { ip netns exec "$@"; }

member() { # member NS ADDR
	ip netns add "$P-$1"
	ip -n "$P-ul" link add "ul-$1" type veth peer name ul0 netns "$P-$1"
	ip -n "$P-ul" link set "ul-$1" master br0 up
	ip -n "$P-$1" link set lo up
	ip -n "$P-$1" addr add "$2/24" dev ul0
	ip -n "$P-$1" link set ul0 up
	if [[ ${GRO:-0} == 1 ]]; then
		x "$P-$1" ethtool -K ul0 gro on
		x "$P-ul" ethtool -K "ul-$1" gro on
	fi
}

container() { # container HOST NAME ADDR
	local h=$P-$1 c=$P-$2
	ip netns add "$c"
	ip -n "$h" link add "v-$2" mtu 1450 type veth peer name eth0 mtu 1450 netns "$c"
	ip -n "$h" link set "v-$2" master mn0 up
	ip -n "$c" link set lo up
	ip -n "$c" addr add "$3/24" dev eth0
	ip -n "$c" link set eth0 up
	ip -n "$c" route add default via 10.78.0.1
}

host() { # host NAME LOCAL REMOTE
	local h=$P-$1
	member "$1" "$2"
	ip -n "$h" link add mn0 mtu 1450 type bridge
	ip -n "$h" addr add 10.78.0.1/24 dev mn0
	ip -n "$h" link set mn0 up
	ip -n "$h" link add mnx42 mtu 1450 type vxlan id 42 local "$2" dstport $PORT nolearning proxy
	ip -n "$h" link set mnx42 master mn0 up
	x "$h" sysctl -qw net.ipv4.ip_forward=1
	x "$h" sysctl -qw net.bridge.bridge-nf-call-iptables="${BRNF:-1}"
	x "$h" iptables-restore <<EOF
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:MYNET-VXLAN - [0:0]
-A INPUT -p udp --dport $PORT -j MYNET-VXLAN
-A MYNET-VXLAN -s $3/32 -j ACCEPT
-A MYNET-VXLAN -j DROP
-A FORWARD -o mn0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i mn0 -o mn0 -j ACCEPT
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.78.0.0/24 ! -o mn0 -j MASQUERADE
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d 10.78.0.0/24 ! -i mn0 -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP
COMMIT
EOF
	if [[ ${NOTRACK:-0} == 1 ]]; then
		x "$h" iptables -t raw -A PREROUTING -p udp --dport $PORT -s "$3" -d "$2" -j NOTRACK
		x "$h" iptables -t raw -A OUTPUT -p udp --dport $PORT -s "$2" -d "$3" -j NOTRACK
	fi
}

peer() { # peer HOST CONTAINER-NS IP REMOTE-VTEP
	local mac
	mac=$(ip -n "$2" -br link show eth0 | awk '{print $3}')
	ip -n "$P-$1" neigh replace "$3" lladdr "$mac" dev mnx42 nud permanent
	bridge -n "$P-$1" fdb replace "$mac" dev mnx42 dst "$4" self permanent
}

up() {
	ip netns add "$P-ul"
	ip -n "$P-ul" link set lo up
	ip -n "$P-ul" link add br0 type bridge
	ip -n "$P-ul" link set br0 up
	host a 198.19.78.1 198.19.78.2
	host b 198.19.78.2 198.19.78.1
	container a a1 10.78.0.2
	container a a2 10.78.0.3
	container b b1 10.78.0.4
	peer a "$P-b1" 10.78.0.4 198.19.78.2
	peer b "$P-a1" 10.78.0.2 198.19.78.1
	peer b "$P-a2" 10.78.0.3 198.19.78.1
}

down() {
	local n
	for n in b1 a2 a1 b a ul; do
		ip netns del "$P-$n" 2>/dev/null || true
	done
}

run() {
	# Not through x: a function in the background is a subshell, and $!
	# its PID, not netbench's (ip netns exec and taskset exec in place).
	ip netns exec "$P-a1" taskset -c "$CPU" "$NB" server -port 5201 >/dev/null &
	local srv=$! t mode from
	trap 'kill $srv 2>/dev/null; wait $srv 2>/dev/null' RETURN
	sleep 0.3
	for t in $(seq "$TRIALS"); do
		for mode in stream rr; do
			for from in b1 a2; do
				if [[ ${PERF:-0} == 1 && $mode == stream ]]; then
					perf record -q -a -g -o "/tmp/$P-perf-$from-$t.data" -- \
						ip netns exec "$P-$from" taskset -c "$CPU" "$NB" client -addr 10.78.0.2:5201 -mode $mode -duration "$DUR" |
						sed "s/^/$mode $from: /"
				else
					x "$P-$from" taskset -c "$CPU" "$NB" client -addr 10.78.0.2:5201 -mode $mode -duration "$DUR" |
						sed "s/^/$mode $from: /"
				fi
			done
		done
	done
}

case ${1:-} in
up) up ;;
down) down ;;
run) run ;;
*) echo "usage: $0 up|run|down" >&2; exit 2 ;;
esac
