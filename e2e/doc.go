// Package e2e drives a real dockerd against the mynet plugin binary: it
// creates networks and containers with the docker CLI and checks what the
// containers, the host and the plugin's own state show.
//
// The suite needs root, a responding docker engine, iproute2, iptables and a
// static busybox at /bin/busybox (Debian's busybox-static). scripts/test.sh
// installs all of them and runs it. The test image it imports also carries
// testdata/udpecho, built with the go command that runs the suite. To run it
// alone:
//
//	make build && sudo go test -count=1 -v ./e2e/
//
// Environment:
//
//	MYNET_BIN           plugin binary (default ../bin/mynet relative to e2e/)
//	MYNET_E2E_LOGDIR    where plugin.log goes (default: a new temp dir)
//	MYNET_E2E_REQUIRED  1 makes missing prerequisites fail instead of skip;
//	                    CI=true does the same
//	MYNET_E2E_ENGINE_LOCK  lock file the engine-restart tests hold while
//	                    they stop and restart dockerd (default
//	                    /tmp/mynet-docker.lock; "off" disables it)
//	MYNET_E2E_ENGINES   engines to run the suite against, one after the
//	                    other, e.g. "host,sid": "host" is the engine the
//	                    docker CLI reaches; "sid" is Debian sid's (28.5),
//	                    "trixie" Debian trixie's (26.1), run beside it by
//	                    scripts/engine.sh (started and stopped by the
//	                    suite unless already up). Each run prints
//	                    "e2e (docker VERSION): N passed, F failed, S skipped"
//	                    (counted from -v output), and its plugin.log goes
//	                    to MYNET_E2E_LOGDIR/ENGINE. Unset: the host's
//	                    engine, in this process
//	                    "sid-nft" is sid's engine started with
//	                    --iptables=false --ip6tables=false (hosts whose
//	                    firewall is nftables only), with the plugin on
//	                    --firewall nftables; its summary line says so:
//	                    "e2e (docker 28.5.2, nftables): ..."
//	MYNET_E2E_FIREWALL  the plugin's --firewall (iptables, nftables, auto);
//	                    unset: the plugin's default, or nftables on sid-nft.
//	                    The leak checks read the backend in use: iptables-save,
//	                    or the plugin's nftables tables
//	MYNET_E2E_DRIVER    "bridge" runs the scenarios that do not depend on
//	                    mynet itself against Docker's bridge driver, without
//	                    starting the plugin: a reference to tell harness bugs
//	                    from plugin bugs
//
// The engine-restart tests stop and restart dockerd (with its own command
// line, plus --live-restore for one of them) and restore it afterwards; the
// managed-plugin test builds the plugin with debootstrap (cached). Both need
// a dockerd that is a plain process, as scripts/test.sh starts it. The soak
// test (build tag soak, make soak) is not part of the default suite.
//
// The plugin is started once for the whole suite under a random name, so it
// never collides with a mynet daemon a developer may be running. Scenarios
// run one after another, because each checks afterwards that it left no
// links, iptables rules or plugin state behind, and those are host-global.
//
// Traffic only ever goes to containers and network namespaces the tests
// create: the "remote host" is a namespace on 198.18.0.0/15 (RFC 2544
// benchmarking space) joined to the host by a veth pair.
package e2e
