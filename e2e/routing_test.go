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

// TestE2EDirectRouting: a LAN host with a route to the network's subnet
// via the host (the remote host's default route) reaches a container's
// published port through the host's address in both gateway modes; in nat
// it reaches nothing by the container's own address, neither the published
// port nor an unpublished one, and in nat-unprotected it reaches both. The
// same assertions hold for Docker's bridge driver from Docker 28, which
// introduced the protection. In neither mode is a container of another
// network, of mynet or of Docker's bridge, let in by the container's address.
//
// Uses 10.140.13N.0/24 and host ports 1538N.
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
				others := []string{
					s.mynetNetwork("other", fmt.Sprintf("10.140.13%d.0/24", i+4)),
					s.network("docker", "-d", "bridge", "--subnet", fmt.Sprintf("10.140.13%d.0/24", i+6)),
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
