package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/mynet/mynet/internal/model"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// udpFlow is a conntrack entry of a UDP flow from src:sport to dst:dport.
func udpFlow(src, dst string, sport, dport uint16) *netlink.ConntrackFlow {
	s, d := net.ParseIP(src), net.ParseIP(dst)
	family := uint8(unix.AF_INET6)
	if s.To4() != nil {
		s, d, family = s.To4(), d.To4(), unix.AF_INET
	}
	f := &netlink.ConntrackFlow{FamilyType: family, TimeOut: 100}
	f.Forward = netlink.IPTuple{SrcIP: s, DstIP: d, Protocol: unix.IPPROTO_UDP, SrcPort: sport, DstPort: dport}
	f.Reverse = netlink.IPTuple{SrcIP: d, DstIP: s, Protocol: unix.IPPROTO_UDP, SrcPort: dport, DstPort: sport}
	return f
}

// addFlows creates the entries, or skips the test where conntrack entries
// cannot be created.
func addFlows(t *testing.T, d *Dataplane, flows ...*netlink.ConntrackFlow) {
	t.Helper()
	for _, f := range flows {
		if err := d.nl.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(f.FamilyType), f); err != nil {
			t.Skipf("cannot create conntrack entries here: %v", err)
		}
	}
}

// flowsLeft lists the IPv4 and IPv6 UDP entries as "src:sport>dst:dport".
func flowsLeft(t *testing.T, d *Dataplane) []string {
	t.Helper()
	var left []string
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := d.nl.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if f.Forward.Protocol != unix.IPPROTO_UDP {
				continue // the bridge's own IGMP and ICMPv6
			}
			left = append(left, net.JoinHostPort(f.Forward.SrcIP.String(), strconv.Itoa(int(f.Forward.SrcPort)))+">"+
				net.JoinHostPort(f.Forward.DstIP.String(), strconv.Itoa(int(f.Forward.DstPort))))
		}
	}
	slices.Sort(left)
	return left
}

// ensureTestNetwork builds n in d and returns what removes it, to defer
// inside withDataplane's function: a t.Cleanup would run after it, off the
// namespace's thread, where iptables would change the host's rules.
func ensureTestNetwork(t *testing.T, d *Dataplane, n model.Network) (remove func()) {
	t.Helper()
	if err := d.EnsureNetwork(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	return func() { d.DeleteNetwork(context.Background(), n) }
}

// holdJanitor stops the janitor behind a job until the returned function
// is called: a janitor slow to get to its queue, as on a loaded host.
func holdJanitor(d *Dataplane) (release func()) {
	ch := make(chan struct{})
	d.janitor <- func(*netlink.Handle) { <-ch }
	return func() { close(ch) }
}

// TestNewEndpointKeepsItsFlows: creating an endpoint on an address nobody
// held leaves the flows its container opens right after alone, however late
// the janitor runs. A flush queued by the create cut them (and, with NAT,
// the connections) when the janitor ran after the container had started.
func TestNewEndpointKeepsItsFlows(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		defer ensureTestNetwork(t, d, n)()
		ep := testEndpoint(n, eid1)
		ep.Addresses = []netip.Addr{netip.MustParseAddr("10.1.0.2")}
		release := holdJanitor(d)
		if err := d.EnsureEndpoint(ctx, ep); err != nil {
			release()
			t.Fatal(err)
		}
		addFlows(t, d, udpFlow("10.1.0.2", "198.18.0.1", 1000, 53)) // the container's first flow
		release()
		d.Sync()
		if left, want := flowsLeft(t, d), []string{"10.1.0.2:1000>198.18.0.1:53"}; !slices.Equal(left, want) {
			t.Fatalf("conntrack entries after the janitor ran: %v, want %v", left, want)
		}
		if err := d.DeleteEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		d.Sync()
		if left := flowsLeft(t, d); len(left) != 0 {
			t.Fatalf("conntrack entries after DeleteEndpoint: %v, want none", left)
		}
	})
}

// TestReusedAddressWaitsForFlush: an endpoint created on an address whose
// previous owner's flows the janitor has not flushed yet waits for that
// flush, so the old flows go and the new container's, opened after the
// create, stay.
func TestReusedAddressWaitsForFlush(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		defer ensureTestNetwork(t, d, n)()
		addr := []netip.Addr{netip.MustParseAddr("10.1.0.2")}
		old, next := testEndpoint(n, eid1), testEndpoint(n, eid2)
		old.Addresses, next.Addresses = addr, addr
		if err := d.EnsureEndpoint(ctx, old); err != nil {
			t.Fatal(err)
		}
		addFlows(t, d, udpFlow("10.1.0.2", "198.18.0.1", 1000, 53))
		release := holdJanitor(d)
		if err := d.DeleteEndpoint(ctx, old); err != nil {
			release()
			t.Fatal(err)
		}
		created := make(chan error, 1)
		go func() {
			err := d.EnsureEndpoint(ctx, next)
			if err == nil {
				// What the new container opens once it runs.
				err = d.nl.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, udpFlow("10.1.0.2", "198.18.0.1", 2000, 53))
			}
			created <- err
		}()
		release()
		if err := <-created; err != nil {
			t.Fatal(err)
		}
		d.Sync()
		if left, want := flowsLeft(t, d), []string{"10.1.0.2:2000>198.18.0.1:53"}; !slices.Equal(left, want) {
			t.Fatalf("conntrack entries: %v, want only the new container's %v", left, want)
		}
		if err := d.DeleteEndpoint(ctx, next); err != nil {
			t.Fatal(err)
		}
	})
}

// TestForgetStale: entries from or to an address of the subnets that is
// not kept go, in both families; kept addresses (live endpoints, gateways)
// and addresses outside the subnets keep theirs.
func TestForgetStale(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		addFlows(t, d,
			udpFlow("10.1.0.2", "198.18.0.1", 1, 1), // a live endpoint's
			udpFlow("10.1.0.3", "198.18.0.1", 2, 2), // a gone container's, as source
			udpFlow("198.18.0.1", "10.1.0.4", 3, 3), // a gone container's, as reply source
			udpFlow("10.1.0.1", "10.1.0.2", 4, 4),   // the gateway's, to a live endpoint
			udpFlow("10.9.0.3", "198.18.0.1", 5, 5), // outside the subnets
			udpFlow("fd00:1::3", "fd00:9::1", 6, 6), // a gone container's, IPv6
			udpFlow("fd00:1::2", "fd00:9::1", 7, 7), // a live endpoint's, IPv6
		)
		subnets := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}
		keep := []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")}
		if err := d.ForgetStale(subnets, keep); err != nil {
			t.Fatal(err)
		}
		want := []string{"10.1.0.1:4>10.1.0.2:4", "10.1.0.2:1>198.18.0.1:1", "10.9.0.3:5>198.18.0.1:5", "[fd00:1::2]:7>[fd00:9::1]:7"}
		if left := flowsLeft(t, d); !slices.Equal(left, want) {
			t.Fatalf("conntrack entries left: %v, want %v", left, want)
		}
	})
}

// TestForgetAddressesBatches: the conntrack entries of every address queued
// for forgetting go, in one pass, and entries of other addresses stay.
func TestForgetAddressesBatches(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		// Two endpoints' addresses as source and as reply source, and a
		// bystander's flow.
		addFlows(t, d, udpFlow("10.1.0.2", "198.18.0.1", 1000, 2000), udpFlow("198.18.0.1", "10.1.0.3", 1000, 2000),
			udpFlow("10.1.0.9", "198.18.0.1", 1000, 2000))
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		for i, a := range []string{"10.1.0.2", "10.1.0.3"} {
			ep := testEndpoint(n, fmt.Sprintf("%012x%052d", i+1, 0))
			ep.Addresses = []netip.Addr{netip.MustParseAddr(a)}
			d.forgetAddresses(ep)
		}
		d.Sync()
		if left, want := flowsLeft(t, d), []string{"10.1.0.9:1000>198.18.0.1:2000"}; !slices.Equal(left, want) {
			t.Fatalf("conntrack entries left: %v, want only the bystander's %v", left, want)
		}
	})
}

// TestRemovePortsFlushesUDPFlows: unpublishing a UDP port range deletes
// the flows to the container through each of its ports, in one pass over
// the table, and leaves the container's other flows.
func TestRemovePortsFlushesUDPFlows(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		defer ensureTestNetwork(t, d, n)()
		ep := testEndpoint(n, eid1)
		for _, port := range []uint16{5000, 5001, 6000} {
			addFlows(t, d, udpFlow("198.18.0.1", "10.1.0.2", 1000, port))
		}
		ports := []model.PortMapping{{Proto: "udp", HostPort: 5000, HostPortEnd: 5001, ContainerIP: netip.MustParseAddr("10.1.0.2"), Port: 5000}}
		if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
			t.Fatal(err)
		}
		if err := d.RemovePorts(ctx, ep, ports); err != nil {
			t.Fatal(err)
		}
		d.Sync()
		if left, want := flowsLeft(t, d), []string{"198.18.0.1:1000>10.1.0.2:6000"}; !slices.Equal(left, want) {
			t.Fatalf("flows left: %v, want only the one to port 6000 %v", left, want)
		}
	})
}
