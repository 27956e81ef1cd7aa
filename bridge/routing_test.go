package bridge

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/mynet/mynet/internal/model"
)

// TestDirectRouting puts a LAN host beside the test's host namespace, with
// a route to the network's subnet via the host, and checks what it reaches
// in each gateway mode: in nat only the published port, through the host's
// address, even when an operator's rule accepts everything forwarded from
// the LAN; in nat-unprotected also the container's ports directly. The
// container's own connections to the LAN work in every mode, also without
// masquerading.
func TestDirectRouting(t *testing.T) {
	for _, tc := range []struct {
		name        string
		unprotected bool
		// permissive adds an operator's rule ahead of mynet's accepting all
		// forwarded LAN traffic: the protection must not rest on the
		// filter table alone.
		permissive bool
		// noMasquerade: the LAN host sees the container's own address,
		// and its replies must still come back in.
		noMasquerade bool
	}{
		{name: "nat"},
		{name: "nat-masquerade-off", noMasquerade: true},
		{name: "nat-behind-permissive-forward", permissive: true},
		{name: "nat-unprotected", unprotected: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withDataplane(t, "", func(d *Dataplane) {
				ctx := context.Background()
				run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
				lan := lanHost(t, d, "10.1.0.0/24")
				before := snapshot(t)
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				n.Unprotected4, n.Masquerade = tc.unprotected, !tc.noMasquerade
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				// Added after mynet's hook, so it is evaluated first.
				permit := []string{"FORWARD", "-s", "198.18.0.0/15", "-j", "ACCEPT"}
				if tc.permissive {
					run(t, append([]string{"iptables", "-I"}, permit...)...)
				}
				ctrIP := netip.MustParseAddr("10.1.0.2")
				ep := testEndpoint(n, eid1)
				ep.Addresses = []netip.Addr{ctrIP}
				ctr := plugContainer(t, d, ep)
				inNetns(t, ctr, func() {
					h, err := netlink.NewHandle()
					if err != nil {
						t.Fatal(err)
					}
					defer h.Close()
					if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.1.0.1")}); err != nil {
						t.Fatalf("container default route: %v", err)
					}
				})
				ports := []model.PortMapping{{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: ctrIP, Port: 80}}
				if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
					t.Fatal(err)
				}
				listen(t, ctr, "10.1.0.2:80")
				listen(t, ctr, "10.1.0.2:81")

				// A container of another network is no LAN host: in every
				// mode the networks stay isolated.
				other := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
				if err := d.EnsureNetwork(ctx, other); err != nil {
					t.Fatal(err)
				}
				otherEP := testEndpoint(other, eid2)
				otherEP.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
				otherEP.Addresses = []netip.Addr{netip.MustParseAddr("10.2.0.2")}
				otherCtr := plugContainer(t, d, otherEP)
				inNetns(t, otherCtr, func() {
					h, err := netlink.NewHandle()
					if err != nil {
						t.Fatal(err)
					}
					defer h.Close()
					if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.2.0.1")}); err != nil {
						t.Fatalf("container default route: %v", err)
					}
				})
				if dialFrom(t, otherCtr, "10.1.0.2:81") {
					t.Errorf("container of another network connected to 10.1.0.2:81, want no connection")
				}

				direct := tc.unprotected
				for _, c := range []struct {
					addr string
					want bool
				}{
					{"198.18.0.1:8080", true}, // the published port, through the host
					{"10.1.0.2:80", direct},   // the published port's container side
					{"10.1.0.2:81", direct},   // an unpublished port
				} {
					if got := dialFrom(t, lan, c.addr); got != c.want {
						t.Errorf("LAN host connecting to %s: connected=%v, want %v", c.addr, got, c.want)
					}
				}

				// The container's own connections to the LAN get their replies.
				listen(t, lan, "198.18.0.2:7000")
				if !dialFrom(t, ctr, "198.18.0.2:7000") {
					t.Errorf("container connecting to the LAN host: no connection")
				}

				if tc.permissive {
					run(t, append([]string{"iptables", "-D"}, permit...)...)
				}
				if err := d.RemovePorts(ctx, ep, ports); err != nil {
					t.Fatal(err)
				}
				if err := d.DeleteEndpoint(ctx, ep); err != nil {
					t.Fatal(err)
				}
				if err := d.DeleteEndpoint(ctx, otherEP); err != nil {
					t.Fatal(err)
				}
				for _, n := range []model.Network{n, other} {
					if err := d.DeleteNetwork(ctx, n); err != nil {
						t.Fatal(err)
					}
				}
				if after := snapshot(t); after != before {
					t.Fatalf("namespace changed:\n--- before\n%s--- after\n%s", before, after)
				}
			})
		})
	}
}

// lanHost makes a namespace linked to the test's by a veth pair in
// 198.18.0.0/30 (the host 198.18.0.1, the LAN host .2) that routes subnet
// via the host, as a router on a LAN would.
func lanHost(t *testing.T, d *Dataplane, subnet string) netns.NsHandle {
	t.Helper()
	ns := newNetns(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "lan1"}
	if err := d.nl.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.nl.LinkDel(veth) })
	if err := d.nl.AddrAdd(veth, mustAddr(t, "198.18.0.1/30")); err != nil {
		t.Fatal(err)
	}
	if err := d.nl.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	peer, err := d.nl.LinkByName("lan1")
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
		l, err := h.LinkByName("lan1")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, mustAddr(t, "198.18.0.2/30")); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		_, dst, _ := net.ParseCIDR(subnet)
		if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("198.18.0.1")}); err != nil {
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
