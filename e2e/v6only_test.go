package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The bridge driver's options of this file, which mynet accepts too.
const (
	optGatewayMode6 = "com.docker.network.bridge.gateway_mode_ipv6"
	optInhibitIPv4  = "com.docker.network.bridge.inhibit_ipv4"
	optBridgeName   = "com.docker.network.bridge.name"
)

// TestE2EIPv6Only: `docker network create --ipv4=false --ipv6` (Docker 28)
// gives containers an IPv6 address and no IPv4 one, one interface with an
// IPv6 default route via the subnet's gateway (no docker_gwbridge leg),
// IPv6 between them, and a published port over IPv6; with mynet's IPAM
// choosing the /64, with a --subnet of it, and with Docker's IPAM; and the
// same against Docker's bridge driver.
//
// Uses fd00:186:N::/64 and host ports 1618N.
func TestE2EIPv6Only(t *testing.T) {
	if major := engineMajor(t); major < 28 {
		t.Skipf("Docker %d has no --ipv4=false: IPv6-only networks arrive in Docker 28", major)
	}
	t.Run("mynet", func(t *testing.T) {
		s := newScenario(t)
		own := s.mynetNetwork("own", "fd00:186:1::/64", "--ipv4=false", "--ipv6")
		checkIPv6Only(t, s, own, netip.MustParsePrefix("fd00:186:1::/64"), 16181)
		if env.ipamDriver != "" {
			auto := s.mynetNetwork("auto", "", "--ipv4=false", "--ipv6")
			checkIPv6Only(t, s, auto, s.subnet6(auto), 16182)
		}
		dock := s.network("dock", "-d", env.driver, "--ipv4=false", "--ipv6", "--subnet", "fd00:186:3::/64")
		checkIPv6Only(t, s, dock, netip.MustParsePrefix("fd00:186:3::/64"), 16183)
	})
	t.Run("docker-bridge", func(t *testing.T) {
		if env.plugin == nil {
			t.Skip("the suite runs against Docker's bridge driver already")
		}
		s := newScenario(t)
		n := s.network("net", "-d", "bridge", "--ipv4=false", "--ipv6", "--subnet", "fd00:186:4::/64")
		checkIPv6Only(t, s, n, netip.MustParsePrefix("fd00:186:4::/64"), 16184)
	})
}

// checkIPv6Only starts a web server publishing hostPort and a peer on
// network, whose IPv6 subnet is subnet.
func checkIPv6Only(t *testing.T, s *scenario, network string, subnet netip.Prefix, hostPort int) {
	t.Helper()
	web := s.start("web"+strconv.Itoa(hostPort), []string{"--net", network, "-p", strconv.Itoa(hostPort) + ":80"}, httpd(80)...)
	peer := s.container("peer"+strconv.Itoa(hostPort), network)
	gw := gateway(subnet)
	for _, c := range []string{web, peer} {
		if links := linkNames(s.exec(c, "ip", "-o", "link")); !slices.Equal(links, []string{"lo", "eth0"}) {
			t.Errorf("%s: links %q, want lo and eth0 (no docker_gwbridge leg)", c, links)
		}
		if v4 := s.exec(c, "ip", "-4", "-o", "addr", "show", "dev", "eth0"); v4 != "" {
			t.Errorf("%s: IPv4 addresses on an IPv6-only network:\n%s", c, v4)
		}
		if inspect := docker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, network), c); inspect != "" {
			t.Errorf("%s: the engine recorded the IPv4 address %q", c, inspect)
		}
		routes := s.exec(c, "ip", "-6", "route")
		if d := defaultRoutes(routes); len(d) != 1 || !strings.HasPrefix(d[0], "default via "+gw.String()+" dev eth0") {
			t.Errorf("%s: IPv6 default routes %q, want one via %s; routes:\n%s", c, d, gw, routes)
		}
	}
	a1, a2 := s.ip6(web, network), s.ip6(peer, network)
	s.expectAddresses(subnet, a1, a2)
	s.expectPing(peer, a1.String())
	s.expectPage(peer, netip.AddrPortFrom(a1, 80))
	// The published port answers on a host IPv6 address, the gateway.
	s.expectPage(hostNS, netip.AddrPortFrom(gw, uint16(hostPort)))
}

// subnet6 returns network's IPv6 subnet.
func (s *scenario) subnet6(network string) netip.Prefix {
	s.t.Helper()
	out := docker(s.t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network)
	for _, f := range strings.Fields(out) {
		if p, err := netip.ParsePrefix(f); err == nil && p.Addr().Is6() {
			return p
		}
	}
	s.t.Fatalf("network %s has no IPv6 subnet: %q", network, out)
	return netip.Prefix{}
}

// TestE2EGatewayAddressOff: gateway mode isolated (internal networks only)
// leaves the bridge without an address of the family, IPv6 without even a
// link-local one, while the containers still reach each other over both
// families; inhibit_ipv4 leaves it without an IPv4 address while the
// containers keep their default route via the gateway, which the operator
// is to put on the bridge. Isolated without --internal is refused. The
// same against Docker's bridge driver (28 and later: isolated came in 28).
//
// Uses 10.186.1N.0/24 and fd00:186:1N::/64.
func TestE2EGatewayAddressOff(t *testing.T) {
	t.Run("mynet", func(t *testing.T) {
		checkGatewayAddressOff(t, env.driver, 0)
	})
	t.Run("docker-bridge", func(t *testing.T) {
		if env.plugin == nil {
			t.Skip("the suite runs against Docker's bridge driver already")
		}
		if major := engineMajor(t); major < 28 {
			t.Skipf("Docker %d's bridge driver has no gateway mode isolated (added in Docker 28): nothing to compare with", major)
		}
		checkGatewayAddressOff(t, "bridge", 5)
	})
}

func checkGatewayAddressOff(t *testing.T, driver string, n int) {
	s := newScenario(t)
	br := func(role string) string { return "e2e" + s.id + role } // not mn*: the leak check counts those
	subnet := func(i int) (string, string) {
		return fmt.Sprintf("10.186.1%d.0/24", n+i), fmt.Sprintf("fd00:186:1%d::/64", n+i)
	}
	v4, v6 := subnet(0)
	_, out, err := s.tryNetwork("open", "-d", driver, "--subnet", v4, "-o", optGatewayMode4+"=isolated")
	if err == nil || !strings.Contains(out, "internal") {
		t.Errorf("gateway mode isolated without --internal: err %v, want a refusal naming internal networks:\n%s", err, out)
	}

	iso := s.network("iso", "-d", driver, "--internal", "--ipv6", "--subnet", v4, "--subnet", v6,
		"-o", optGatewayMode4+"=isolated", "-o", optGatewayMode6+"=isolated", "-o", optBridgeName+"="+br("i"))
	c1, c2 := s.container("iso1", iso), s.container("iso2", iso)
	if addrs := hostLinkAddrs(t, br("i")); len(addrs) != 0 {
		t.Errorf("isolated bridge %s has addresses %q, want none (not even link-local)", br("i"), addrs)
	}
	s.expectPing(c1, s.ip(c2, iso).String())
	s.expectPing(c2, s.ip6(c1, iso).String())
	// From 28 the engine asks the driver (GwAllocCheck) and reserves no
	// gateway for an isolated family; before, it reserves both.
	if major := engineMajor(t); major >= 28 {
		if gws := docker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", iso); gws != "" {
			t.Errorf("Docker %d reserved the gateways %q for the isolated network, want none", major, gws)
		}
	}

	v4, v6 = subnet(1)
	inh := s.network("inhibit", "-d", driver, "--ipv6", "--subnet", v4, "--subnet", v6,
		"-o", optInhibitIPv4+"=true", "-o", optBridgeName+"="+br("n"))
	c3, c4 := s.container("inh1", inh), s.container("inh2", inh)
	addrs := hostLinkAddrs(t, br("n"))
	if slices.ContainsFunc(addrs, func(a string) bool { return netip.MustParsePrefix(a).Addr().Is4() }) {
		t.Errorf("inhibit_ipv4 bridge %s has addresses %q, want no IPv4 one", br("n"), addrs)
	}
	// The control: the IPv6 gateway is on the bridge as usual.
	if !slices.Contains(addrs, gateway(netip.MustParsePrefix(v6)).String()+"/64") {
		t.Errorf("inhibit_ipv4 bridge %s has addresses %q, want its IPv6 gateway", br("n"), addrs)
	}
	routes := s.exec(c3, "ip", "route")
	if d := defaultRoutes(routes); len(d) != 1 || !strings.HasPrefix(d[0], "default via "+gateway(netip.MustParsePrefix(v4)).String()+" dev eth0") {
		t.Errorf("%s: default routes %q, want one via the network's gateway; routes:\n%s", c3, d, routes)
	}
	s.expectPing(c3, s.ip(c4, inh).String())
}

// tryNetwork is network for a create that may fail; it returns docker's
// output. A network that does get created is removed with the others.
func (s *scenario) tryNetwork(role string, args ...string) (name, out string, err error) {
	name = s.name(role)
	s.networks = append(s.networks, name)
	out, err = run("docker", append(append([]string{"network", "create"}, args...), name)...)
	return name, out, err
}

// hostLinkAddrs returns the addresses (with prefix length) of a host link,
// link-local ones included.
func hostLinkAddrs(t *testing.T, link string) []string {
	t.Helper()
	out, err := run("ip", "-o", "addr", "show", "dev", link)
	if err != nil {
		t.Fatalf("addresses of %s: %v", link, err)
	}
	var addrs []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" || f[i] == "inet6" {
				addrs = append(addrs, f[i+1])
			}
		}
	}
	return addrs
}
