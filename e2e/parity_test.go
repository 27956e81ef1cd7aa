package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Connectivity parity with Docker's bridge driver: its -o keys, --internal,
// IPv6, published ports, several networks per container and conntrack
// hygiene, each judged by what traffic does. Every negative check has a
// positive control in the same test, so that a lost packet means the
// feature at work, not a dead or misaddressed target.
//
// Test N uses 10.140.N.0/24 (and 10.140.N0.0/24, fd00:140:N::/64) and host
// ports 14N00-14N99. MYNET_E2E_DRIVER=bridge runs the same tests against
// Docker's own bridge driver, the reference they describe.

// The bridge driver's option keys, which mynet accepts as they are.
const (
	optICC         = "com.docker.network.bridge.enable_icc"
	optMasquerade  = "com.docker.network.bridge.enable_ip_masquerade"
	optHostBinding = "com.docker.network.bridge.host_binding_ipv4"
)

// TestE2EParityICCDisabled: with enable_icc=false the containers of a
// network reach neither each other directly (ping or TCP, either way) but
// still reach the remote host, and a port one publishes is reachable from
// the other through the host's addresses (hairpin through DNAT).
func TestE2EParityICCDisabled(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	subnet := netip.MustParsePrefix("10.140.1.0/24")
	n := s.mynetNetwork("net", subnet.String(), "-o", optICC+"=false")
	web := s.start("web", []string{"--net", n, "-p", "14180:80"}, httpd(80)...)
	client := s.container("client", n)
	addrs := s.ips(n, web, client)

	// Positive controls: both are up and have egress, and web serves.
	for i, c := range []string{web, client} {
		s.expectPing(hostNS, addrs[i].String())
		s.expectPing(c, remote.addr.String())
	}
	s.expectPage(hostNS, netip.AddrPortFrom(addrs[0], 80))

	s.expectNoPing(web, addrs[1].String())
	s.expectNoPing(client, addrs[0].String())
	s.expectNoConnection(client, netip.AddrPortFrom(addrs[0], 80))

	for _, hostAddr := range []netip.Addr{remote.hostAddr, gateway(subnet)} {
		s.expectPage(client, netip.AddrPortFrom(hostAddr, 14180))
	}
}

// TestE2EParityMasquerade: the remote host sees egress from a default
// network as coming from the host's address, and from a network with
// enable_ip_masquerade=false as coming from the container's own address.
// The remote host routes everything back through the host (its default
// route), so the unmasqueraded connection completes too.
func TestE2EParityMasquerade(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	masq := s.mynetNetwork("masq", "10.140.2.0/24")
	direct := s.mynetNetwork("direct", "10.140.20.0/24", "-o", optMasquerade+"=false")

	for _, tc := range []struct {
		role, network string
		masquerade    bool
	}{{"masq-c", masq, true}, {"direct-c", direct, false}} {
		c := s.container(tc.role, tc.network)
		want, what := remote.hostAddr, "the host's address (masquerade)"
		if !tc.masquerade {
			want, what = s.ip(c, tc.network), "the container's own address (no masquerade)"
		}
		port, got := remote.acceptOne(t)
		token := "hello-from-" + c
		s.exec(c, "sh", "-c", fmt.Sprintf("echo %s | nc -w 3 %s %d", token, remote.addr, port))
		conn := <-got
		switch {
		case conn.err != nil:
			t.Errorf("%s: remote host %s: %v", tc.network, remote.addr, conn.err)
		case conn.line != token:
			t.Errorf("%s: remote host received %q, want %q", tc.network, conn.line, token)
		case conn.from != want:
			t.Errorf("%s: remote host saw source %s, want %s, %s", tc.network, conn.from, want, what)
		}
	}
}

// TestE2EParityHostBinding: on a network with host_binding_ipv4=ADDR,
// -p 14380:80 publishes on ADDR only: reachable there from the remote host
// and from the host, refused on the host's other addresses.
func TestE2EParityHostBinding(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	subnet := netip.MustParsePrefix("10.140.3.0/24")
	n := s.mynetNetwork("net", subnet.String(), "-o", optHostBinding+"="+remote.hostAddr.String())
	s.start("web", []string{"--net", n, "-p", "14380:80"}, httpd(80)...)

	bound := netip.AddrPortFrom(remote.hostAddr, 14380)
	s.expectPage(remote.where(), bound)
	s.expectPage(hostNS, bound)
	for _, other := range []netip.Addr{gateway(subnet), netip.MustParseAddr("127.0.0.1")} {
		s.expectNoConnection(hostNS, netip.AddrPortFrom(other, 14380))
	}
	s.expectNoConnection(remote.where(), netip.AddrPortFrom(gateway(subnet), 14380))
}

// TestE2EParityInternal: a container on an --internal network has only eth0
// and no default route (Docker's bridge driver does give it one, to a
// gateway that forwards nothing), reaches the other containers of the network but not
// the remote host, not even through a route it adds itself, and a port it
// publishes is not reachable from outside (if docker run accepts -p at all).
func TestE2EParityInternal(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	subnet := netip.MustParsePrefix("10.140.4.0/24")
	n := s.mynetNetwork("net", subnet.String(), "--internal")
	a, b := s.container("a", n), s.container("b", n)
	addrs := s.ips(n, a, b)
	s.expectAddresses(subnet, addrs...)

	for _, c := range []string{a, b} {
		if links := linkNames(s.exec(c, "ip", "-o", "link")); !slices.Equal(links, []string{"lo", "eth0"}) {
			t.Errorf("%s has links %q, want lo and eth0 (no docker_gwbridge leg)", c, links)
		}
		if routes := s.exec(c, "ip", "route"); len(defaultRoutes(routes)) > 0 {
			if env.plugin != nil {
				t.Errorf("%s has a default route on an internal network:\n%s", c, routes)
			} else {
				t.Logf("as expected, Docker's bridge driver differs from mynet's contract here: %s on an internal network has a default route:\n%s", c, routes)
			}
		}
	}
	s.expectPing(a, addrs[1].String())
	s.expectPing(b, addrs[0].String())

	out, ok := s.ping(a, remote.addr.String(), 1)
	if ok || !strings.Contains(out, "Network is unreachable") && !strings.Contains(out, "0 packets received") {
		t.Errorf("ping from %s on an internal network to the remote host %s: want no route or no reply, got:\n%s", a, remote.addr, out)
	}
	// The host must not forward for it either: a container that may add a
	// route through the gateway still gets nowhere (and no reply back).
	esc := s.start("escaper", []string{"--net", n, "--cap-add", "NET_ADMIN"})
	s.exec(esc, "ip", "route", "replace", "default", "via", gateway(subnet).String())
	s.expectPing(esc, addrs[0].String())
	s.expectNoPing(esc, remote.addr.String())

	web, out, err := s.tryStart("web", []string{"--net", n, "-p", "14480:80"}, httpd(80)...)
	if err != nil {
		t.Logf("docker run -p on an internal network failed, which is allowed:\n%s", out)
		return
	}
	s.expectPage(a, netip.AddrPortFrom(s.ip(web, n), 80)) // it serves
	for _, from := range []string{remote.where(), hostNS} {
		out := s.expectNoConnection(from, netip.AddrPortFrom(remote.hostAddr, 14480))
		t.Logf("docker run -p 14480:80 on an internal network started; from %s: %s", from, out)
	}
}

// defaultRoutes returns the default routes in `ip route` output.
func defaultRoutes(routes string) []string {
	var out []string
	for _, line := range strings.Split(routes, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "default") {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// TestE2EParityIPv6: with --ipv6 and an IPv6 subnet, from mynet's IPAM or
// Docker's, containers get an address of the subnet and a default route via
// its first address, and ping each other over IPv6; the two networks stay
// isolated over IPv6.
func TestE2EParityIPv6(t *testing.T) {
	s := newScenario(t)
	nets := []struct {
		role, name string
		subnet     netip.Prefix
	}{
		{role: "own", subnet: netip.MustParsePrefix("fd00:140:5::/64")},
		{role: "dock", subnet: netip.MustParsePrefix("fd00:140:50::/64")},
	}
	nets[0].name = s.mynetNetwork("own-ipam", "10.140.5.0/24", "--ipv6", "--subnet", nets[0].subnet.String())
	nets[1].name = s.network("docker-ipam", "-d", env.driver, "--ipv6",
		"--subnet", "10.140.50.0/24", "--subnet", nets[1].subnet.String())

	var first []netip.Addr // of each network's first container
	var firstName []string
	for _, n := range nets {
		c1, c2 := s.container(n.role+"1", n.name), s.container(n.role+"2", n.name)
		a1, a2 := s.ip6(c1, n.name), s.ip6(c2, n.name)
		s.expectAddresses(n.subnet, a1, a2)
		want := "default via " + gateway(n.subnet).String() + " dev eth0"
		for _, c := range []string{c1, c2} {
			routes := s.exec(c, "ip", "-6", "route")
			if d := defaultRoutes(routes); len(d) != 1 || !strings.HasPrefix(d[0], want) {
				t.Errorf("%s: IPv6 default routes %q, want one %q; routes:\n%s", c, d, want, routes)
			}
		}
		s.expectPing(c1, a2.String())
		s.expectPing(c2, a1.String())
		first, firstName = append(first, a1), append(firstName, c1)
	}
	if t.Failed() {
		for _, c := range firstName {
			t.Logf("%s: %s", c, s.exec(c, "sysctl", "net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.eth0.disable_ipv6"))
		}
	}
	if env.plugin == nil {
		// Docker 20.10 filters IPv6 only with the daemon's experimental
		// ip6tables option, off by default.
		t.Log("not checking IPv6 isolation against Docker's bridge driver")
		return
	}
	s.expectNoPing(firstName[0], first[1].String())
	s.expectNoPing(firstName[1], first[0].String())
}

// TestE2EParityPublish: -p 14680:80 is reachable from the remote host at the
// host's address, from the host at a non-loopback address and at 127.0.0.1,
// and from containers on the same and on another mynet network through the
// host's address.
func TestE2EParityPublish(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	subnetA := netip.MustParsePrefix("10.140.6.0/24")
	netA := s.mynetNetwork("a", subnetA.String())
	netB := s.mynetNetwork("b", "10.140.60.0/24")
	s.start("web", []string{"--net", netA, "-p", "14680:80"}, httpd(80)...)
	peer, other := s.container("peer", netA), s.container("other", netB)

	published := netip.AddrPortFrom(remote.hostAddr, 14680)
	for _, from := range []string{remote.where(), hostNS, peer, other} {
		s.expectPage(from, published)
	}
	s.expectPage(hostNS, netip.AddrPortFrom(gateway(subnetA), 14680))
	s.expectPage(hostNS, netip.MustParseAddrPort("127.0.0.1:14680"))
}

// TestE2EParityPublishRange: -p 14910-14912:14910-14912 forwards each host
// port to the same container port; httpd listens on the middle one.
func TestE2EParityPublishRange(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	n := s.mynetNetwork("net", "10.140.9.0/24")
	s.start("web", []string{"--net", n, "-p", "14910-14912:14910-14912"}, httpd(14911)...)
	s.expectPage(remote.where(), netip.AddrPortFrom(remote.hostAddr, 14911))
}

// TestE2EParityPublishAutoPort: -p 80 without a host port starts, mynet
// picks a host port, records it in the endpoint's Ports and logs it, and
// that port answers.
func TestE2EParityPublishAutoPort(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	n := s.mynetNetwork("net", "10.140.10.0/24")
	web := s.start("web", []string{"--net", n, "-p", "80"}, httpd(80)...)
	port := s.chosenHostPort(web, n)
	t.Logf("-p 80 got host port %d", port)
	s.expectPage(remote.where(), netip.AddrPortFrom(remote.hostAddr, port))
}

// chosenHostPort returns the host port chosen for container's -p 80: from
// the plugin's endpoint record, checking that the plugin logged it, or from
// `docker port` with Docker's bridge driver.
func (s *scenario) chosenHostPort(container, network string) uint16 {
	s.t.Helper()
	if env.plugin == nil {
		out := docker(s.t, "port", container, "80/tcp") // 0.0.0.0:49153, then :::49153
		first, _, _ := strings.Cut(out, "\n")
		ap, err := netip.ParseAddrPort(first)
		if err != nil {
			s.t.Fatalf("docker port %s 80/tcp: %q: %v", container, out, err)
		}
		return ap.Port()
	}
	id := s.endpointID(container, network)
	ports, found, err := env.plugin.endpointPorts(id)
	if err != nil {
		s.t.Fatal(err)
	}
	var port uint16
	for _, p := range ports {
		switch {
		case p.Proto != "tcp" || p.Port != 80:
			s.t.Errorf("endpoint %.12s publishes %+v, want only 80/tcp", id, p)
		case p.HostPort == 0 || p.HostPortEnd != p.HostPort:
			s.t.Errorf("endpoint %.12s publishes 80/tcp on host ports %d-%d, want one chosen port", id, p.HostPort, p.HostPortEnd)
		case port != 0 && p.HostPort != port:
			s.t.Errorf("endpoint %.12s publishes 80/tcp on host ports %d and %d, want one", id, port, p.HostPort)
		default:
			port = p.HostPort
		}
	}
	if port == 0 {
		s.t.Fatalf("-p 80: the plugin's record of endpoint %.12s (found: %v) has no chosen host port: Ports %+v\nplugin log lines about it:\n%s",
			id, found, ports, logLines(env.plugin.logPath, id[:12]))
	}
	if lines := logLines(env.plugin.logPath, id[:12], strconv.Itoa(int(port))); lines == "" {
		s.t.Errorf("-p 80 got host port %d, but no plugin log line names endpoint %.12s and the port; lines about the endpoint:\n%s",
			port, id, logLines(env.plugin.logPath, id[:12]))
	}
	return port
}

// logLines returns the lines of the log at path that contain every word.
func logLines(path string, words ...string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestE2EParityPublishUDP: -p 14653:5353/udp forwards datagrams from the
// remote host to the container and the replies back.
func TestE2EParityPublishUDP(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	n := s.mynetNetwork("net", "10.140.11.0/24")
	s.start("echo", []string{"--net", n, "-p", "14653:5353/udp"}, "udpecho", "echo", "5353")
	published := netip.AddrPortFrom(remote.hostAddr, 14653)
	reply, err := remote.udpExchange(41153, published, "hello", 3*time.Second)
	if err != nil || reply != "echo: hello" {
		t.Errorf("UDP to %s from the remote host: want reply %q, got %q (%v)", published, "echo: hello", reply, err)
	}
}

// TestE2EParityPublishConflict: a host port that is already published
// cannot be published again, on the same network or another: docker run
// fails with an error that names the port, leaves nothing of the failed
// container behind, and the first mapping keeps working.
func TestE2EParityPublishConflict(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	netA := s.mynetNetwork("a", "10.140.12.0/24")
	netB := s.mynetNetwork("b", "10.140.120.0/24")
	s.start("first", []string{"--net", netA, "-p", "14690:80"}, httpd(80)...)
	published := netip.AddrPortFrom(remote.hostAddr, 14690)
	s.expectPage(remote.where(), published)

	before, err := takeSnapshot(env.plugin)
	if err != nil {
		t.Fatal(err)
	}
	for role, n := range map[string]string{"dup-a": netA, "dup-b": netB} {
		c, out, err := s.tryStart(role, []string{"--net", n, "-p", "14690:80"}, httpd(80)...)
		if err == nil {
			t.Errorf("a second -p 14690:80, on %s, started; want it to fail", n)
			continue
		}
		if !strings.Contains(out, "14690") {
			t.Errorf("a second -p 14690:80, on %s, failed with an error that does not name the port:\n%s", n, out)
		}
		if state, _ := run("docker", "inspect", "-f", "{{.State.Status}}", c); state == "running" {
			t.Errorf("%s is running although docker run failed", c)
		}
	}
	if added, gone, err := settle(before); err != nil {
		t.Error(err)
	} else if len(added)+len(gone) > 0 {
		t.Errorf("the failed runs changed mynet's objects\nleft behind:%s\ngone:%s", bullets(added), bullets(gone))
	}
	s.expectPage(remote.where(), published)
}

// TestE2EParityMultiNetwork: a container on mynet network A, connected to
// mynet network B and to a Docker bridge network, reaches a peer on each;
// once disconnected from one it no longer reaches that peer; its published
// port keeps answering throughout, also when it leaves A, the network it
// published on, and the ports follow the gateway to B.
func TestE2EParityMultiNetwork(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	netA := s.mynetNetwork("a", "10.140.7.0/24")
	netB := s.mynetNetwork("b", "10.140.70.0/24")
	netBr := s.network("br", "-d", "bridge", "--subnet", "10.140.71.0/24")
	peer := map[string]string{} // network -> the peer's address there
	for role, n := range map[string]string{"pa": netA, "pb": netB, "pbr": netBr} {
		peer[n] = s.ip(s.container(role, n), n).String()
	}
	c := s.start("multi", []string{"--net", netA, "-p", "14780:80"}, httpd(80)...)
	published := netip.AddrPortFrom(remote.hostAddr, 14780)
	s.expectPage(remote.where(), published)

	on := []string{netA}
	check := func(step string, off ...string) {
		t.Helper()
		if links := linkNames(s.exec(c, "ip", "-o", "link")); len(links) != 1+len(on) {
			t.Errorf("%s: %s has links %q, want lo and %d more", step, c, links, len(on))
		}
		for _, n := range on {
			s.expectPing(c, peer[n])
		}
		for _, n := range off {
			s.expectNoPing(c, peer[n])
		}
		if out, err := get(remote.where(), published, 3); err != nil || !isPage(out) {
			t.Errorf("%s: published port %s from the remote host: want the page, got (%v):\n%s", step, published, err, out)
		}
	}

	docker(t, "network", "connect", netB, c)
	docker(t, "network", "connect", netBr, c)
	on = append(on, netB, netBr)
	check("after connecting to B and the bridge network")

	docker(t, "network", "disconnect", netBr, c)
	on = []string{netA, netB}
	check("after disconnecting from the bridge network", netBr)

	docker(t, "network", "disconnect", netA, c)
	on = []string{netB}
	check("after disconnecting from A, the network it was started on", netA)
}

// TestE2EParityUDPConntrack: when a UDP server container is removed and a
// new one (at another address) publishes the same port, datagrams from the
// same remote source port reach the new one: no stale conntrack entry
// still sends them to the old address.
func TestE2EParityUDPConntrack(t *testing.T) {
	s := newScenario(t)
	remote := newRemoteHost(t)
	n := s.mynetNetwork("net", "10.140.8.0/24")
	const srcPort = 40853
	published := netip.AddrPortFrom(remote.hostAddr, 14853)
	exchange := func(src uint16, msg, wantFrom string) {
		t.Helper()
		reply, err := remote.udpExchange(src, published, msg, 3*time.Second)
		if want := wantFrom + ": " + msg; err != nil || reply != want {
			t.Errorf("UDP to %s from the remote host's port %d: want reply %q, got %q (%v)", published, src, want, reply, err)
		}
	}

	first := s.start("first", []string{"--net", n, "--ip", "10.140.8.10", "-p", "14853:5353/udp"}, "udpecho", "first", "5353")
	exchange(srcPort, "one", "first")
	if t.Failed() {
		t.FailNow()
	}
	docker(t, "rm", "-f", first)
	s.start("second", []string{"--net", n, "--ip", "10.140.8.20", "-p", "14853:5353/udp"}, "udpecho", "second", "5353")
	exchange(srcPort, "two", "second")
	// Control: a new flow reaches the new server, so a failure above is
	// the old flow's, not the new mapping's.
	exchange(srcPort+1, "three", "second")
}
