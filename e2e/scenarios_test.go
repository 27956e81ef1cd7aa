package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Each scenario uses subnets of its own, so that a network left behind by a
// failed one cannot break the next.

// TestE2EConnectivity: containers on one mynet network (driver and IPAM)
// reach each other by address and by name, have only eth0 with a default
// route via the gateway, are reachable from the host, and serve the README's
// httpd example to each other.
func TestE2EConnectivity(t *testing.T) {
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.123.1.0/24")
	n := s.mynetNetwork("net", subnet.String())
	web := s.container("web", n, "httpd", "-f", "-p", "80", "-h", "/")
	client := s.container("client", n)
	addrs := s.ips(n, web, client)
	s.expectAddresses(subnet, addrs...)

	for _, c := range []string{web, client} {
		s.expectOnlyEth0(c, gateway(subnet))
	}
	for _, p := range [][2]string{
		{web, addrs[1].String()}, {client, addrs[0].String()}, // by address
		{web, client}, {client, web}, // by name, through Docker's embedded DNS
		{hostNS, addrs[0].String()}, {hostNS, addrs[1].String()},
	} {
		s.expectPing(p[0], p[1])
	}

	resp := s.exec(client, "sh", "-c", `printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 `+web+` 80`)
	if page := strings.TrimSpace(httpdPage); !strings.Contains(resp, "200 OK") || !strings.Contains(resp, page) {
		t.Errorf("GET http://%s/ from %s: want 200 and %q, got:\n%s", web, client, page, resp)
	}
}

// TestE2EDockerIPAM: the mynet driver works with Docker's default IPAM.
func TestE2EDockerIPAM(t *testing.T) {
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.125.2.0/24")
	n := s.network("net", "-d", env.driver, "--subnet", subnet.String())
	if ipam := docker(t, "network", "inspect", "-f", "{{.IPAM.Driver}}", n); ipam != "default" {
		t.Fatalf("network %s uses IPAM driver %q, want Docker's default", n, ipam)
	}
	a, b := s.container("a", n), s.container("b", n)
	addrs := s.ips(n, a, b)
	s.expectAddresses(subnet, addrs...)
	s.expectPing(a, addrs[1].String())
	s.expectPing(b, addrs[0].String())
}

// TestE2EDefaultPools: without --subnet, mynet's IPAM hands each network a
// different /24 of its own default pool, never one of Docker's ranges.
func TestE2EDefaultPools(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	pool := netip.MustParsePrefix("10.213.0.0/16")
	var subnets []netip.Prefix
	for _, role := range []string{"a", "b"} {
		n := s.mynetNetwork(role, "")
		subnet := s.subnet(n)
		if subnet.Bits() != 24 || !pool.Contains(subnet.Addr()) {
			t.Errorf("network %s got subnet %s, want a /24 inside %s", n, subnet, pool)
		}
		subnets = append(subnets, subnet)

		c := s.container(role+"-c", n)
		addr := s.ip(c, n)
		s.expectAddresses(subnet, addr)
		s.expectOnlyEth0(c, gateway(subnet))
		s.expectPing(hostNS, addr.String())
	}
	if subnets[0].Overlaps(subnets[1]) {
		t.Errorf("two networks got overlapping subnets %s and %s", subnets[0], subnets[1])
	}
}

// TestE2EIsolation: a mynet network reaches neither another mynet network
// nor a Docker bridge network, in either direction.
func TestE2EIsolation(t *testing.T) {
	s := newScenario(t)
	netA := s.mynetNetwork("a", "10.126.4.0/24")
	netB := s.mynetNetwork("b", "10.126.40.0/24")
	netBr := s.network("bridge", "-d", "bridge", "--subnet", "10.124.9.0/24")
	a1, a2 := s.container("a1", netA), s.container("a2", netA)
	b1 := s.container("b1", netB)
	br1 := s.container("br1", netBr)
	addrA := s.ips(netA, a1, a2)
	addr := map[string]string{
		a1:  addrA[0].String(),
		a2:  addrA[1].String(),
		b1:  s.ip(b1, netB).String(),
		br1: s.ip(br1, netBr).String(),
	}

	// Positive controls: traffic within a network flows, and every target
	// answers the host, so a lost ping below means isolation, not a dead
	// or misaddressed target.
	s.expectPing(a1, addr[a2])
	for _, c := range []string{a1, b1, br1} {
		s.expectPing(hostNS, addr[c])
	}
	for _, p := range [][2]string{{a1, b1}, {b1, a1}, {a1, br1}, {br1, a1}} {
		s.expectNoPing(p[0], addr[p[1]])
	}
}

// TestE2EEgress: a container reaches a host outside, which sees the host's
// own address as the source (masquerading).
func TestE2EEgress(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	n := s.mynetNetwork("net", "10.127.5.0/24")
	c := s.container("client", n)
	port, got := remote.acceptOne(t)

	token := "hello-from-" + c
	s.exec(c, "sh", "-c", fmt.Sprintf("echo %s | nc -w 3 %s %d", token, remote.addr, port))
	conn := <-got
	if conn.err != nil {
		t.Fatalf("remote host %s: %v", remote.addr, conn.err)
	}
	if conn.line != token {
		t.Errorf("remote host received %q, want %q", conn.line, token)
	}
	if conn.from != remote.hostAddr {
		t.Errorf("remote host saw source %s, want the host's address %s (masquerade)", conn.from, remote.hostAddr)
	}
}

// TestE2EDockerNetworkModes: Docker's container, host and none modes still
// behave next to a mynet network.
func TestE2EDockerNetworkModes(t *testing.T) {
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.128.6.0/24")
	n := s.mynetNetwork("net", subnet.String())
	c := s.container("main", n)
	addr := s.ip(c, n)

	shared := parseAddrs(s.runOnce("shared", "container:"+c, "ip", "-o", "addr"))
	if link, ok := linkWithAddr(shared, addr); !ok || link != "eth0" {
		t.Errorf("--net=container:%s: want %s on eth0; addresses: %v", c, addr, shared)
	}

	host := parseAddrs(s.runOnce("host", "host", "ip", "-o", "addr"))
	if link, ok := linkWithAddr(host, gateway(subnet)); !ok || !strings.HasPrefix(link, env.linkPrefix) {
		t.Errorf("--net=host: want the network's bridge (%s...) holding %s; addresses: %v",
			env.linkPrefix, gateway(subnet), host)
	}

	if links := linkNames(s.runOnce("none", "none", "ip", "-o", "link")); !slices.Equal(links, []string{"lo"}) {
		t.Errorf("--net=none: links %q, want only lo", links)
	}
}

func linkWithAddr(addrs []ifAddr, addr netip.Addr) (string, bool) {
	for _, a := range addrs {
		if a.prefix.Addr() == addr {
			return a.link, true
		}
	}
	return "", false
}

// TestE2EPluginRestart: after the plugin is killed and started again, an
// existing network keeps working, new containers get fresh addresses, and
// removing everything still leaves nothing behind.
func TestE2EPluginRestart(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.129.7.0/24")
	n := s.mynetNetwork("net", subnet.String())
	a, b := s.container("a", n), s.container("b", n)
	addrs := s.ips(n, a, b)

	if err := env.plugin.restart(); err != nil {
		t.Fatal(err)
	}
	// Forwarding is kernel state and must not depend on the daemon.
	s.expectPing(a, addrs[1].String())

	c := s.container("after-restart", n)
	addrs = append(addrs, s.ip(c, n))
	s.expectAddresses(subnet, addrs...) // in particular, not a or b's again
	s.expectOnlyEth0(c, gateway(subnet))
	s.expectPing(c, addrs[0].String())
	s.expectPing(b, addrs[2].String())

	// The cleanup would do this too; here its failure is the test's.
	docker(t, "rm", "-f", a, b, c)
	docker(t, "network", "rm", n)
}

// TestE2EParallelRuns: concurrent container starts on one network all
// succeed with distinct addresses.
func TestE2EParallelRuns(t *testing.T) {
	const parallel = 20
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.130.8.0/24")
	n := s.mynetNetwork("net", subnet.String())

	names := make([]string, parallel)
	errs := make([]error, parallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range names {
		names[i] = s.trackContainer(fmt.Sprintf("p%02d", i))
		wg.Go(func() { _, errs[i] = run("docker", runArgs(names[i], n)...) })
	}
	wg.Wait()
	t.Logf("%d parallel `docker run -d` took %v", parallel, time.Since(start).Round(time.Millisecond))
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		return
	}
	addrs := s.ips(n, names...)
	s.expectAddresses(subnet, addrs...)
	s.expectPing(names[0], addrs[parallel-1].String())
}
