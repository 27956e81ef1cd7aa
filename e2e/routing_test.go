package e2e

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// optGatewayMode4 is the bridge driver's gateway mode of IPv4, which mynet
// accepts as nat (the default) or nat-unprotected.
const optGatewayMode4 = "com.docker.network.bridge.gateway_mode_ipv4"

// optTrusted is the bridge driver's trusted_host_interfaces (Docker 28.2).
const optTrusted = "com.docker.network.bridge.trusted_host_interfaces"

// TestE2EDirectRouting: a LAN host with a route to the network's subnet
// via the host (the remote host's default route) reaches a container's
// published port through the host's address in both gateway modes; in nat
// it reaches nothing by the container's own address, neither the published
// port nor an unpublished one, and in nat-unprotected it reaches both. The
// same assertions hold for Docker's bridge driver from Docker 28, which
// introduced the protection. In neither mode is a container of another
// network, of mynet or of Docker's bridge, let in by the container's address.
//
// Uses 10.140.130.0/24 to 10.140.139.0/24 and host ports 1538N.
func TestE2EDirectRouting(t *testing.T) {
	cases := []struct {
		mode        string
		unprotected bool
	}{{"nat", false}, {"nat-unprotected", true}}
	t.Run("mynet", func(t *testing.T) {
		for i, tc := range cases {
			t.Run(tc.mode, func(t *testing.T) {
				s := newScenario(t)
				subnet := fmt.Sprintf("10.140.13%d.0/24", i)
				var opts []string
				if tc.unprotected {
					opts = []string{"-o", optGatewayMode4 + "=" + tc.mode}
				}
				// A Docker bridge named by the user counts as Docker's
				// too: mynet knows Docker's bridges from Docker's rules.
				others := []string{
					s.mynetNetwork("other", fmt.Sprintf("10.140.13%d.0/24", i+4)),
					s.network("docker", "-d", "bridge", "--subnet", fmt.Sprintf("10.140.13%d.0/24", i+6)),
				}
				if why := noDockerFirewall(); why != "" {
					t.Logf("no renamed Docker bridge among the others: %s, so nothing names it Docker's", why)
				} else {
					others = append(others, s.network("renamed", "-d", "bridge", "--subnet", fmt.Sprintf("10.140.13%d.0/24", i+8),
						"-o", "com.docker.network.bridge.name=e2e-ren"+randHex(3)))
				}
				checkDirectRouting(t, s, s.mynetNetwork("net", subnet, opts...), 15380+i, tc.unprotected, others...)
			})
		}
	})
	t.Run("docker-bridge", func(t *testing.T) {
		if env.plugin == nil {
			t.Skip("the suite runs against Docker's bridge driver already")
		}
		if major := engineMajor(t); major < 28 {
			t.Skipf("Docker %d's bridge driver has no direct-routing protection (added in Docker 28): nothing to compare with", major)
		}
		if why := noDockerFirewall(); why != "" {
			t.Skipf("%s: its bridge driver has no direct-routing protection here, nothing to compare with", why)
		}
		for i, tc := range cases {
			t.Run(tc.mode, func(t *testing.T) {
				s := newScenario(t)
				subnet := fmt.Sprintf("10.140.13%d.0/24", i+2)
				net := s.network("net", "-d", "bridge", "--subnet", subnet, "-o", optGatewayMode4+"="+tc.mode)
				checkDirectRouting(t, s, net, 15382+i, tc.unprotected)
			})
		}
	})
}

// checkDirectRouting starts a container on network serving the test page
// on port 80, published as hostPort, and on port 81, unpublished, and
// checks what a LAN host reaches.
func checkDirectRouting(t *testing.T, s *scenario, network string, hostPort int, unprotected bool, others ...string) {
	t.Helper()
	remote := newRemoteHost(t)
	serve := "httpd -p 81 -h / && exec " + strings.Join(httpd(80), " ")
	c := s.start("web", []string{"--network", network, "-p", strconv.Itoa(hostPort) + ":80"}, "sh", "-c", serve)
	lan := remote.where()
	ctr := s.ip(c, network)
	// The positive control: the LAN host, the container and the path
	// through the host work.
	s.expectPage(lan, netip.AddrPortFrom(remote.hostAddr, uint16(hostPort)))
	for _, port := range []uint16{80, 81} {
		target := netip.AddrPortFrom(ctr, port)
		if unprotected {
			s.expectPage(lan, target)
		} else {
			s.expectNoConnection(lan, target)
		}
	}
	for i, other := range others {
		peer := s.container("peer"+strconv.Itoa(i), other)
		s.expectPage(peer, netip.AddrPortFrom(remote.hostAddr, uint16(hostPort)))
		s.expectNoConnection(peer, netip.AddrPortFrom(ctr, 81))
	}
}

// engineMajor is the major version of the engine under test.
func engineMajor(t *testing.T) int {
	t.Helper()
	out, err := run("docker", "version", "--format", "{{.Server.Version}}")
	if err != nil {
		t.Fatal(err)
	}
	major, err := strconv.Atoi(strings.SplitN(strings.TrimSpace(out), ".", 2)[0])
	if err != nil {
		t.Fatalf("engine version %q: %v", out, err)
	}
	return major
}

// TestE2ERoutedAndTrusted: gateway mode routed and trusted_host_interfaces,
// against mynet on every engine and Docker's bridge from Docker 28.
//
//   - routed: a LAN host reaches the published container port at the
//     container's address and pings it, but neither an unpublished port
//     nor the host port (routed maps no host port); the container's
//     connections reach the LAN with its own address (no masquerade).
//   - nat with the first LAN host's interface trusted: that host reaches
//     the published container port at the container's address, and not an
//     unpublished one; a second LAN host, on another interface, reaches
//     neither. Both reach the published port through the host's address.
//
// Positive controls: httpd answers on the unpublished port to a container
// of the same network, and the host port works in nat.
//
// Uses 10.140.14N.0/24 and host ports 1539N.
func TestE2ERoutedAndTrusted(t *testing.T) {
	type target struct {
		name string
		net  func(s *scenario, subnet string, opts ...string) string
	}
	targets := []target{{"mynet", func(s *scenario, subnet string, opts ...string) string {
		return s.mynetNetwork("net", subnet, opts...)
	}}}
	if env.plugin != nil {
		targets = append(targets, target{"docker-bridge", func(s *scenario, subnet string, opts ...string) string {
			return s.network("net", append([]string{"-d", "bridge", "--subnet", subnet}, opts...)...)
		}})
	}
	for ti, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			if tg.name == "docker-bridge" {
				if major := engineMajor(t); major < 28 {
					t.Skipf("Docker %d's bridge driver has no gateway modes nor trusted_host_interfaces (27.0 and 28.2): nothing to compare with", major)
				}
				if why := noDockerFirewall(); why != "" {
					t.Skipf("%s: its gateway modes and trusted interfaces are firewall rules it does not write here, nothing to compare with", why)
				}
			}
			t.Run("routed", func(t *testing.T) {
				s := newScenario(t)
				net := tg.net(s, fmt.Sprintf("10.140.14%d.0/24", 2*ti), "-o", optGatewayMode4+"=routed")
				checkRouted(t, s, net, 15390+2*ti)
			})
			t.Run("trusted", func(t *testing.T) {
				s := newScenario(t)
				trusted, other := newRemoteHost(t), newRemoteHost(t)
				net := tg.net(s, fmt.Sprintf("10.140.14%d.0/24", 2*ti+1), "-o", optTrusted+"="+trusted.hostIf)
				checkTrusted(t, s, net, 15391+2*ti, trusted, other)
			})
		})
	}
}

// serveTwo starts a container serving the test page on 80, published as
// hostPort, and on 81, unpublished, and proves with a peer of the same
// network that both answer.
func serveTwo(t *testing.T, s *scenario, network string, hostPort int) netip.Addr {
	t.Helper()
	serve := "httpd -p 81 -h / && exec " + strings.Join(httpd(80), " ")
	c := s.start("web", []string{"--network", network, "-p", strconv.Itoa(hostPort) + ":80"}, "sh", "-c", serve)
	ctr := s.ip(c, network)
	peer := s.container("peer", network)
	s.expectPage(peer, netip.AddrPortFrom(ctr, 80))
	s.expectPage(peer, netip.AddrPortFrom(ctr, 81))
	return ctr
}

func checkRouted(t *testing.T, s *scenario, network string, hostPort int) {
	t.Helper()
	remote := newRemoteHost(t)
	ctr := serveTwo(t, s, network, hostPort)
	lan := remote.where()
	s.expectPage(lan, netip.AddrPortFrom(ctr, 80))
	s.expectPing(lan, ctr.String())
	s.expectNoConnection(lan, netip.AddrPortFrom(ctr, 81))
	s.expectNoConnection(lan, netip.AddrPortFrom(remote.hostAddr, uint16(hostPort)))

	port, got := remote.acceptOne(t)
	c := s.container("client", network)
	token := "hello-from-" + c
	s.exec(c, "sh", "-c", fmt.Sprintf("echo %s | nc -w 3 %s %d", token, remote.addr, port))
	switch conn := <-got; {
	case conn.err != nil:
		t.Errorf("remote host %s: %v", remote.addr, conn.err)
	case conn.line != token:
		t.Errorf("remote host received %q, want %q", conn.line, token)
	case conn.from != s.ip(c, network):
		t.Errorf("remote host saw source %s, want the container's own address %s (routed: no masquerade)", conn.from, s.ip(c, network))
	}
}

func checkTrusted(t *testing.T, s *scenario, network string, hostPort int, trusted, other *remoteHost) {
	t.Helper()
	ctr := serveTwo(t, s, network, hostPort)
	for _, r := range []*remoteHost{trusted, other} {
		s.expectPage(r.where(), netip.AddrPortFrom(r.hostAddr, uint16(hostPort)))
		s.expectNoConnection(r.where(), netip.AddrPortFrom(ctr, 81))
	}
	s.expectPage(trusted.where(), netip.AddrPortFrom(ctr, 80))
	s.expectNoConnection(other.where(), netip.AddrPortFrom(ctr, 80))
}
