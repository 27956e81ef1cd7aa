package bridge

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

// TestBridgeAddressFamilies: which addresses the bridge carries for an
// IPv6-only network, inhibit_ipv4 and gateway mode isolated of either
// family, checked on the kernel's bridge; an ensure repeats without
// change and keeps an address the operator put on an inhibit_ipv4 bridge;
// deleting the network restores the namespace.
func TestBridgeAddressFamilies(t *testing.T) {
	v6 := []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}
	for _, tc := range []struct {
		name       string
		modify     func(*model.Network)
		want       []string // global addresses on the bridge
		ipv6Off    bool     // disable_ipv6=1: not even a link-local address
		operatorV4 string   // an address the operator adds, which stays
	}{
		{"dual stack (control)", func(n *model.Network) { n.IPv6 = v6 }, []string{"10.1.0.1/24", "fd00:1::1/64"}, false, ""},
		{"IPv6 only", func(n *model.Network) { n.IPv4, n.IPv6 = nil, v6 }, []string{"fd00:1::1/64"}, false, ""},
		{"inhibit_ipv4", func(n *model.Network) { n.IPv6, n.NoBridgeIPv4 = v6, true }, []string{"fd00:1::1/64"}, false, "10.1.0.254/24"},
		{"isolated both", func(n *model.Network) { n.IPv6, n.Internal, n.NoBridgeIPv4, n.NoBridgeIPv6 = v6, true, true, true }, nil, true, ""},
		{"isolated IPv6", func(n *model.Network) { n.IPv6, n.Internal, n.NoBridgeIPv6 = v6, true, true }, []string{"10.1.0.1/24"}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withDataplane(t, "", func(d *Dataplane) {
				ctx := context.Background()
				before := snapshot(t)
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				tc.modify(&n)
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				want := tc.want
				if tc.operatorV4 != "" {
					run(t, "ip", "addr", "add", tc.operatorV4, "dev", n.Bridge)
					want = append(want, tc.operatorV4)
				}
				for _, when := range []string{"created", "ensured again"} {
					if when != "created" {
						if err := d.EnsureNetwork(ctx, n); err != nil {
							t.Fatal(err)
						}
					}
					got, linkLocal := bridgeAddrs(t, n.Bridge)
					slices.Sort(got)
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Errorf("%s: bridge addresses %v, want %v", when, got, want)
					}
					off, err := readSysctl("net/ipv6/conf/" + n.Bridge + "/disable_ipv6")
					if err != nil {
						t.Fatal(err)
					}
					if (off == "1") != tc.ipv6Off || (linkLocal && tc.ipv6Off) {
						t.Errorf("%s: disable_ipv6 = %s, link-local address %v; want IPv6 off = %v", when, off, linkLocal, tc.ipv6Off)
					}
				}
				if err := d.DeleteNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				if after := snapshot(t); after != before {
					t.Fatalf("namespace changed:\n--- before\n%s--- after\n%s", before, after)
				}
			})
		})
	}
}

// bridgeAddrs returns the bridge's global addresses, and whether it has
// a link-local one.
func bridgeAddrs(t *testing.T, bridge string) (global []string, linkLocal bool) {
	t.Helper()
	l, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			linkLocal = true
			continue
		}
		global = append(global, a.IPNet.String())
	}
	return global, linkLocal
}

// TestSpoofIPv6Only: an endpoint of an IPv6-only network has no IPv4
// address, so the anti-spoofing filter lets none of its IPv4 or ARP out
// (it could only claim another's address), while its IPv6 passes.
func TestSpoofIPv6Only(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := model.Network{ID: nid1, Bridge: model.BridgeName(nid1), ICC: true, Masquerade: true,
			IPv6: []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}}
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		victim := spoofEndpoint(n, eid1, "02:00:00:00:00:0a", "fd00:1::10")
		attacker := spoofEndpoint(n, eid2, "02:00:00:00:00:0b", "fd00:1::11")
		vNS, aNS := plugContainer(t, d, victim), plugContainer(t, d, attacker)
		for _, ep := range []model.Endpoint{victim, attacker} {
			if err := d.EnsureSpoofCheck(ep); err != nil {
				t.Fatal(err)
			}
		}
		waitForCleanups(d)
		vIP6, aIP6 := victim.Addresses[0], attacker.Addresses[0]
		vMAC, aMAC := victim.MAC, attacker.MAC
		bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		some4 := netip.MustParseAddr("10.1.0.11")
		probes := []struct {
			name  string
			frame func(m []byte) []byte
			rule  string
		}{
			{"IPv6 from own address (control)", func(m []byte) []byte { return ether(vMAC, aMAC, unix.ETH_P_IPV6, ipv6UDP(aIP6, vIP6, m)) }, ""},
			{"IPv4 from any address", func(m []byte) []byte {
				return ether(vMAC, aMAC, unix.ETH_P_IP, ipv4UDP(some4, netip.MustParseAddr("10.1.0.10"), m))
			}, "IPv4 source is not the endpoint's"},
			{"ARP request from any address", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_ARP, arp(1, aMAC, some4, make(net.HardwareAddr, 6), netip.MustParseAddr("10.1.0.10"), m))
			}, "ARP sender address is not the endpoint's"},
		}
		rx := openPacketSocket(t, vNS, victim.ContainerVeth)
		tx := openPacketSocket(t, aNS, attacker.ContainerVeth)
		rx.drain()
		before := spoofCounters(t, d.SpoofTable())
		markers := map[string][]byte{}
		var control [][]byte
		for i, p := range probes {
			markers[p.name] = []byte(fmt.Sprintf("MYNET6ONLY%03d", i))
			if p.rule == "" {
				control = append(control, markers[p.name])
			}
			tx.send(t, p.frame(markers[p.name]))
		}
		got := rx.collectUntil(control, 5*time.Second, 300*time.Millisecond)
		after := spoofCounters(t, d.SpoofTable())
		for _, p := range probes {
			arrived := slices.ContainsFunc(got, func(f []byte) bool { return bytes.Contains(f, markers[p.name]) })
			if arrived != (p.rule == "") {
				t.Errorf("%s: arrived at the victim = %v, want %v", p.name, arrived, p.rule == "")
			}
			if p.rule != "" && after[p.rule] <= before[p.rule] {
				t.Errorf("%s: rule %q counted no drop", p.name, p.rule)
			}
		}
		for _, ep := range []model.Endpoint{victim, attacker} {
			if err := d.RemoveSpoofCheck(ep); err != nil {
				t.Fatal(err)
			}
			if err := d.DeleteEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}
