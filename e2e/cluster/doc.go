// Package cluster is the multi-host (issue 14) end-to-end suite: it brings
// up several Docker hosts and one etcd on this machine with
// scripts/cluster.sh, drives each host's engine with the docker CLI, and
// tears the hosts down again, checking that nothing of them is left.
//
//	make build && sudo go test -count=1 -v ./e2e/cluster/
//
// It needs root, dockerd, the machine's containerd (the hosts share it, each
// under a containerd namespace of its own), ctr, iproute2, a static busybox
// at /bin/busybox (Debian's busybox-static) for the test image, and, the
// first time, apt-get to fetch Debian's etcd (cached under
// /var/cache/mynet/etcd).
//
// Environment:
//
//	MYNET_BIN           plugin binary (default ../../bin/mynet)
//	MYNET_E2E_REQUIRED  1 (or CI=true) makes missing prerequisites fail
//	                    instead of skip
//	MYNET_CLUSTER_SERVE_ARGS, MYNET_CLUSTER_LOCK, MYNET_ETCD_BIN
//	                    passed to scripts/cluster.sh (see there)
//
// Every host's mynet runs in cluster mode (issue 14) when the binary has
// --cluster-store: the suite passes --cluster-store, --vtep-addr, --host-id,
// a dead grace of 15 s and a metrics socket through
// MYNET_CLUSTER_SERVE_ARGS, before the caller's flags there. Without cluster
// mode the scenarios (scenarios_test.go, policy_test.go,
// store_faults_test.go) skip, saying why, and the harness tests
// (local_test.go) run alone. After the scenarios etcd must hold no
// network, VNI, cursor or claim.
//
// The suite owns the cluster: a cluster found up when it starts (a killed
// earlier run, a manual one) is taken down first. up and down hold the lock
// the single-host suite takes around engine restarts, briefly; the
// scenarios run without it.
//
// Traffic goes only to the hosts' containers and namespaces: the underlay
// is 198.19.77.0/24 on a bridge in a namespace of its own, and no namespace
// has a route out of the machine.
package cluster
