package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/mynet/mynet/internal/model"
)

// TestDirectRouting puts LAN hosts beside the test's host namespace, with
// a route to the network's subnet via the host, and checks what they reach
// in each gateway mode: in nat only the published port, through the host's
// address, even when an operator's rule accepts everything forwarded from
// the LAN; in nat-unprotected also the container's ports directly; in
// routed the published container port at the container's address, and
// nothing through the host. A trusted interface reaches the published
// container port directly in nat, another LAN interface does not. The
// container's own connections to the LAN work in every mode, also without
// masquerading, and in routed the LAN sees the container's own address.
// Both firewall backends run the same cases.
func TestDirectRouting(t *testing.T) {
	for _, b := range firewallBackends() {
		t.Run(b.name, func(t *testing.T) { testDirectRouting(t, b) })
	}
}

// firewallBackend is how a privileged test runs a Dataplane on one
// firewall backend and looks at what it left.
type firewallBackend struct {
	name string
	with func(t *testing.T, fn func(d *Dataplane))
	// snapshot is the namespace's links and its whole ruleset.
	snapshot func(t *testing.T) string
	// permit adds an operator's rule, evaluated before mynet's, that
	// accepts everything forwarded from the LAN; the returned func takes
	// it out.
	permit func(t *testing.T) func()
}

func firewallBackends() []firewallBackend {
	return []firewallBackend{
		{name: "iptables",
			with:     func(t *testing.T, fn func(d *Dataplane)) { withDataplane(t, "", fn) },
			snapshot: snapshot,
			permit: func(t *testing.T) func() {
				// Inserted after mynet's hook, so it is evaluated first.
				permit := []string{"FORWARD", "-s", "198.18.0.0/15", "-j", "ACCEPT"}
				run(t, append([]string{"iptables", "-I"}, permit...)...)
				return func() { run(t, append([]string{"iptables", "-D"}, permit...)...) }
			}},
		{name: "nftables",
			with:     func(t *testing.T, fn func(d *Dataplane)) { withNFTDataplane(t, fn) },
			snapshot: func(t *testing.T) string { return linksSnapshot(t) + nftRuleset(t) },
			permit: func(t *testing.T) func() {
				// A table of the operator's at a lower priority than
				// mynet's forward chain: its accept ends only its own
				// chain, as an iptables-nft FORWARD accept would.
				run(t, "nft", "add table ip operator; add chain ip operator forward { type filter hook forward priority -10; policy accept; }; add rule ip operator forward ip saddr 198.18.0.0/15 accept")
				return func() { run(t, "nft", "delete", "table", "ip", "operator") }
			}},
	}
}

func testDirectRouting(t *testing.T, b firewallBackend) {
	for _, tc := range []struct {
		name        string
		unprotected bool
		routed      bool
		trusted     bool // the first LAN host's interface is trusted
		// permissive adds an operator's rule ahead of mynet's accepting all
		// forwarded LAN traffic: the protection must not rest on the
		// filter table alone.
		permissive bool
		// noMasquerade: the LAN host sees the container's own address,
		// and its replies must still come back in.
		noMasquerade bool
		// What the first LAN host reaches: the host port, the published
		// container port, an unpublished one; and whether a container of
		// another network reaches the published container port directly.
		hostPort, published, unpublished, otherNetwork bool
	}{
		{name: "nat", hostPort: true},
		{name: "nat-masquerade-off", noMasquerade: true, hostPort: true},
		{name: "nat-behind-permissive-forward", permissive: true, hostPort: true},
		{name: "nat-unprotected", unprotected: true, hostPort: true, published: true, unpublished: true},
		{name: "nat-trusted", trusted: true, hostPort: true, published: true},
		{name: "routed", routed: true, published: true, otherNetwork: true},
		{name: "routed-trusted", routed: true, trusted: true, published: true, otherNetwork: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b.with(t, func(d *Dataplane) {
				ctx := context.Background()
				run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
				lan := lanHost(t, d, "10.1.0.0/24", 0)
				other := lanHost(t, d, "10.1.0.0/24", 1)
				before := b.snapshot(t)
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				n.Unprotected4, n.Routed4, n.Masquerade = tc.unprotected, tc.routed, !tc.noMasquerade
				if tc.trusted {
					n.TrustedInterfaces = []string{"lan0"}
				}
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				unpermit := func() {}
				if tc.permissive {
					unpermit = b.permit(t)
				}
				ctrIP := netip.MustParseAddr("10.1.0.2")
				ep := testEndpoint(n, eid1)
				ep.Addresses, ep.TrustedInterfaces = []netip.Addr{ctrIP}, n.TrustedInterfaces
				ctr := plugContainer(t, d, ep)
				defaultRoute(t, ctr, "10.1.0.1")
				ports := []model.PortMapping{{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: ctrIP, Port: 80}}
				if tc.routed {
					// As the driver resolves -p 8080:80 in routed mode.
					ports = []model.PortMapping{{Proto: "tcp", ContainerIP: ctrIP, Port: 80}}
				}
				if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
					t.Fatal(err)
				}
				listen(t, ctr, "10.1.0.2:80")
				listen(t, ctr, "10.1.0.2:81")

				// A container of another network is no LAN host: it reaches
				// no unpublished port; a published one only in routed, as
				// with Docker's bridge.
				otherNet := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
				if err := d.EnsureNetwork(ctx, otherNet); err != nil {
					t.Fatal(err)
				}
				otherEP := testEndpoint(otherNet, eid2)
				otherEP.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
				otherEP.Addresses = []netip.Addr{netip.MustParseAddr("10.2.0.2")}
				otherCtr := plugContainer(t, d, otherEP)
				defaultRoute(t, otherCtr, "10.2.0.1")
				for _, c := range []struct {
					addr string
					want bool
				}{{"10.1.0.2:81", false}, {"10.1.0.2:80", tc.otherNetwork}} {
					if got := dialFrom(t, otherCtr, c.addr); got != c.want {
						t.Errorf("container of another network connecting to %s: connected=%v, want %v", c.addr, got, c.want)
					}
				}

				for _, c := range []struct {
					from netns.NsHandle
					what string
					addr string
					want bool
				}{
					{lan, "LAN host", "198.18.0.1:8080", tc.hostPort}, // the published port, through the host
					{lan, "LAN host", "10.1.0.2:80", tc.published},    // the published port's container side
					{lan, "LAN host", "10.1.0.2:81", tc.unpublished},  // an unpublished port
					{other, "untrusted LAN host", "10.1.0.2:80", tc.published && !tc.trusted || tc.routed},
					{other, "untrusted LAN host", "10.1.0.2:81", tc.unpublished},
				} {
					if got := dialFrom(t, c.from, c.addr); got != c.want {
						t.Errorf("%s connecting to %s: connected=%v, want %v", c.what, c.addr, got, c.want)
					}
				}

				// The container's own connections to the LAN get their
				// replies; without masquerading, or routed, the LAN host
				// sees the container's address.
				peers := accepting(t, lan, "198.18.0.2:7000")
				if !dialFrom(t, ctr, "198.18.0.2:7000") {
					t.Errorf("container connecting to the LAN host: no connection")
				}
				wantSrc := netip.MustParseAddr("198.18.0.1")
				if tc.routed || tc.noMasquerade {
					wantSrc = ctrIP
				}
				select {
				case src := <-peers:
					if src != wantSrc {
						t.Errorf("the LAN host saw the container's connection from %s, want %s", src, wantSrc)
					}
				case <-time.After(2 * time.Second):
					t.Errorf("the LAN host accepted no connection")
				}

				unpermit()
				if err := d.RemovePorts(ctx, ep, ports); err != nil {
					t.Fatal(err)
				}
				if err := d.DeleteEndpoint(ctx, ep); err != nil {
					t.Fatal(err)
				}
				if err := d.DeleteEndpoint(ctx, otherEP); err != nil {
					t.Fatal(err)
				}
				for _, n := range []model.Network{n, otherNet} {
					if err := d.DeleteNetwork(ctx, n); err != nil {
						t.Fatal(err)
					}
				}
				if after := b.snapshot(t); after != before {
					t.Fatalf("namespace changed:\n--- before\n%s--- after\n%s", before, after)
				}
			})
		})
	}
}

// defaultRoute gives a container namespace its default route.
func defaultRoute(t *testing.T, ns netns.NsHandle, gw string) {
	t.Helper()
	inNetns(t, ns, func() {
		h, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw)}); err != nil {
			t.Fatalf("container default route: %v", err)
		}
	})
}

// lanHost makes a namespace linked to the test's by a veth pair, the
// i-th LAN: in 198.18.0.(4i)/30, the host .(4i+1) on lan(2i), the LAN host
// .(4i+2) on lan(2i+1)), that routes subnet via the host, as a router on
// a LAN would.
func lanHost(t *testing.T, d *Dataplane, subnet string, i int) netns.NsHandle {
	t.Helper()
	ns := newNetns(t)
	hostIf, lanIf := fmt.Sprintf("lan%d", 2*i), fmt.Sprintf("lan%d", 2*i+1)
	hostAddr := fmt.Sprintf("198.18.0.%d", 4*i+1)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: lanIf}
	if err := d.nl.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.nl.LinkDel(veth) })
	if err := d.nl.AddrAdd(veth, mustAddr(t, hostAddr+"/30")); err != nil {
		t.Fatal(err)
	}
	if err := d.nl.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	peer, err := d.nl.LinkByName(lanIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.nl.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	inNetns(t, ns, func() {
		h, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		l, err := h.LinkByName(lanIf)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, mustAddr(t, fmt.Sprintf("198.18.0.%d/30", 4*i+2))); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		_, dst, _ := net.ParseCIDR(subnet)
		if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(hostAddr)}); err != nil {
			t.Fatal(err)
		}
		// The published port is reached through the host's address on
		// the LAN, which needs no route.
	})
	return ns
}

func mustAddr(t *testing.T, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// inNetns runs fn with the calling (locked) thread in ns, and returns it
// to its namespace; sockets fn opens stay in ns.
func inNetns(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(cur); err != nil {
			t.Fatalf("back to the test namespace: %v", err)
		}
	}()
	fn()
}

// listen accepts connections on addr in ns and closes them at once, until
// the test ends.
func listen(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	var l net.Listener
	inNetns(t, ns, func() {
		var err error
		if l, err = net.Listen("tcp", addr); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// accepting accepts connections on addr in ns until the test ends, and
// sends each peer's address on the channel (dropped when nobody reads).
func accepting(t *testing.T, ns netns.NsHandle, addr string) <-chan netip.Addr {
	t.Helper()
	var l net.Listener
	inNetns(t, ns, func() {
		var err error
		if l, err = net.Listen("tcp", addr); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { l.Close() })
	peers := make(chan netip.Addr, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap():
			default:
			}
			c.Close()
		}
	}()
	return peers
}

// dialFrom reports whether a TCP connection from ns to addr is accepted.
// A dropped SYN shows as no connection within the bound; a bound, not a
// timing assertion.
func dialFrom(t *testing.T, ns netns.NsHandle, addr string) bool {
	t.Helper()
	var ok bool
	inNetns(t, ns, func() {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
			ok = true
		}
	})
	return ok
}
