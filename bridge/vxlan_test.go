package bridge

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
)

const testVNI = 4242

// vxHost is one "host" of a cluster test: a namespace on the underlay
// with its own Dataplane, the cluster network's bridge (every host's with
// the same gateway), one container, and a VXLAN device.
type vxHost struct {
	name      string
	firewall  string // the backend: model.FirewallIPTables or FirewallNFTables
	ns        netns.NsHandle
	d         *Dataplane
	vtep      netip.Addr
	n         model.Network
	ep        model.Endpoint
	ctr       netns.NsHandle
	before    string // snapshot before mynet touched the host
	bridgeMAC net.HardwareAddr
}

func (h *vxHost) vx() model.VXLAN {
	return model.VXLAN{VNI: testVNI, Local: h.vtep, UnderlayMTU: 1500}
}

// peer is how the other hosts reach h's container.
func (h *vxHost) peer() model.VXLANPeer {
	return model.VXLANPeer{IP: h.ep.Addresses[0], MAC: h.ep.MAC, VTEP: h.vtep}
}

// do runs fn with the thread in h's namespace: iptables children inherit it.
func (h *vxHost) do(t *testing.T, fn func()) { t.Helper(); inNetns(t, h.ns, fn) }

// underlay makes the test's namespace the underlay switch: a bridge on
// 198.19.77.0/24 without an address of its own.
func underlay(t *testing.T) netlink.Link {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ul"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return br
}

// newVXHost plugs host i into the underlay at 198.19.77.(i+1) and builds
// its network, container (10.77.0.(10+i)) and VXLAN device.
func newVXHost(t *testing.T, ul netlink.Link, i int, firewall string) *vxHost {
	t.Helper()
	h := &vxHost{name: string(rune('a' + i)), firewall: firewall, ns: newNetns(t), vtep: netip.AddrFrom4([4]byte{198, 19, 77, byte(i + 1)})}
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul-" + h.name, MasterIndex: ul.Attrs().Index}, PeerName: "under0"}
	if err := netlink.LinkAdd(up); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(up); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName("under0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(h.ns)); err != nil {
		t.Fatal(err)
	}
	h.do(t, func() {
		l, err := netlink.LinkByName("under0")
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.AddrAdd(l, mustAddr(t, h.vtep.String()+"/24")); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		for _, cmd := range []string{"iptables", "ip6tables"} {
			for _, table := range []string{"filter", "nat", "mangle"} {
				run(t, cmd, "-t", table, "-N", "PRIME")
				run(t, cmd, "-t", table, "-X", "PRIME")
			}
		}
		h.before = snapshot(t)
		if h.d, err = New(Config{Instance: "mynet-test", Firewall: firewall}); err != nil {
			t.Fatal(err)
		}
		h.build(t, i)
	})
	return h
}

func (h *vxHost) build(t *testing.T, i int) {
	t.Helper()
	ctx := context.Background()
	h.n = testNetwork(nid1, "10.77.0.0/24", "10.77.0.1/24")
	if err := h.d.EnsureNetwork(ctx, h.n); err != nil {
		t.Fatal(err)
	}
	h.ep = testEndpoint(h.n, fmt.Sprintf("%012x", 0xccc0+i)+strings.Repeat("3", 52))
	h.ep.MAC = net.HardwareAddr{0x02, 0x42, 0, 0, 0, byte(0x10 + i)}
	h.ep.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)})}
	h.ep.AntiSpoofing = true
	h.ctr = plugContainer(t, h.d, h.ep)
	defaultRoute(t, h.ctr, "10.77.0.1")
	if err := h.d.EnsureVXLAN(ctx, h.n, h.vx()); err != nil {
		t.Fatal(err)
	}
	br, err := h.d.nl.LinkByName(h.n.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	h.bridgeMAC = br.Attrs().HardwareAddr
}

// teardown removes what mynet made on h and checks that nothing is left.
func (h *vxHost) teardown(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	h.do(t, func() {
		if err := h.d.RemoveVXLAN(ctx, h.n, testVNI); err != nil {
			t.Error(err)
		}
		if err := h.d.RemoveVTEPFilter(ctx); err != nil {
			t.Error(err)
		}
		if err := h.d.DeleteEndpoint(ctx, h.ep); err != nil {
			t.Error(err)
		}
		waitForCleanups(h.d)
		if err := h.d.DeleteNetwork(ctx, h.n); err != nil {
			t.Error(err)
		}
		h.d.Close()
		if after := snapshot(t); after != h.before {
			t.Errorf("host %s: left behind:\n--- before\n%s--- after\n%s", h.name, h.before, after)
		}
		if got := output(t, "nft", "list", "ruleset"); strings.TrimSpace(got) != "" && strings.Contains(got, "mynet") {
			t.Errorf("host %s: nftables objects left behind:\n%s", h.name, got)
		}
	})
}

// TestVXLANCrossHost builds two hosts on an underlay, each with a bridge
// carrying the same gateway and a container under anti-spoofing, and a
// VXLAN device with the other's container as its peer; then checks
// reachability and each way it must break.
func TestVXLANCrossHost(t *testing.T) {
	nstest.RequireCommand(t, "iptables")
	nstest.RequireCommand(t, "nft")
	for _, fw := range []string{model.FirewallIPTables, model.FirewallNFTables} {
		t.Run(fw, func(t *testing.T) { testVXLANCrossHost(t, fw) })
	}
}

func testVXLANCrossHost(t *testing.T, firewall string) {
	nstest.Run(t, func() {
		ctx := context.Background()
		ul := underlay(t)
		a, b := newVXHost(t, ul, 0, firewall), newVXHost(t, ul, 1, firewall)
		for _, p := range []struct{ h, other *vxHost }{{a, b}, {b, a}} {
			p.h.do(t, func() {
				if err := p.h.d.EnsurePeer(ctx, p.h.n, testVNI, p.other.peer()); err != nil {
					t.Fatal(err)
				}
				if err := p.h.d.SyncVTEPFilter(ctx, model.DefaultVXLANPort, []netip.Addr{p.other.vtep}); err != nil {
					t.Fatal(err)
				}
			})
		}
		// Steps, not subtests: t.Run would run them on another goroutine,
		// off this locked thread, and namespace switches there would land
		// on arbitrary threads of the process (the host's, too).
		checkReachable(t, a, b)
		checkLocalGateway(t, a, b)
		checkNoBroadcast(t, a, b)
		checkPeerEntries(t, a, b)
		checkVTEPFilter(t, a, b)
		checkVXLANIdempotent(t, a, b)
		a.teardown(t)
		b.teardown(t)
	})
}

// checkReachable: ping both ways, and TCP.
func checkReachable(t *testing.T, a, b *vxHost) {
	ipB := b.ep.Addresses[0].String()
	for _, c := range []struct {
		from *vxHost
		to   string
	}{{a, ipB}, {b, a.ep.Addresses[0].String()}} {
		if !ping(t, c.from.ctr, c.to) {
			t.Errorf("container on host %s does not reach %s", c.from.name, c.to)
		}
	}
	listen(t, b.ctr, ipB+":80")
	if !dialFrom(t, a.ctr, ipB+":80") {
		t.Errorf("TCP from host a's container to %s:80 fails", ipB)
	}
}

// checkNoBroadcast: B's container holds an address no peer entry
// announces: only an ARP broadcast crossing the underlay could find it.
func checkNoBroadcast(t *testing.T, a, b *vxHost) {
	inNetns(t, b.ctr, func() { run(t, "ip", "addr", "add", "10.77.0.99/24", "dev", b.ep.ContainerVeth) })
	// Its own: the anti-spoofing filter would drop its ARP answers.
	ep := b.ep
	ep.Addresses = append(slices.Clone(ep.Addresses), netip.MustParseAddr("10.77.0.99"))
	b.do(t, func() {
		if err := b.d.EnsureSpoofCheck(ep); err != nil {
			t.Fatal(err)
		}
	})
	if !ping(t, b.ns, "10.77.0.99") {
		t.Fatal("host b's container does not answer on 10.77.0.99 on its own bridge: the check proves nothing")
	}
	if ping(t, a.ctr, "10.77.0.99") {
		t.Error("host a's container reached 10.77.0.99, which only an ARP broadcast crossing hosts could find")
	}
	// The device answers ARP itself (proxy) and never forwards it, so
	// also frames that only an all-zero FDB entry would carry: a
	// broadcast and an unknown unicast, beside a known unicast that
	// must arrive.
	sa, sb := openPacketSocket(t, a.ctr, a.ep.ContainerVeth), openPacketSocket(t, b.ctr, b.ep.ContainerVeth)
	src, dstB := a.ep.Addresses[0], b.ep.Addresses[0]
	frames := []struct {
		what   string
		dst    net.HardwareAddr
		ip     netip.Addr
		marker []byte
	}{
		{"a broadcast", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, netip.MustParseAddr("10.77.0.255"), []byte("vx-broadcast")},
		{"an unknown unicast", net.HardwareAddr{0x02, 0x42, 0, 0, 0, 0x77}, netip.MustParseAddr("10.77.0.77"), []byte("vx-unknown")},
		{"a known unicast", b.ep.MAC, dstB, []byte("vx-unicast")},
	}
	sb.drain()
	for _, f := range frames {
		sa.send(t, ether(f.dst, a.ep.MAC, unix.ETH_P_IP, ipv4UDP(src, f.ip, f.marker)))
	}
	got := sb.collectUntil([][]byte{frames[2].marker}, 2*time.Second, 300*time.Millisecond)
	for _, f := range frames {
		arrived := slices.ContainsFunc(got, func(g []byte) bool { return bytes.Contains(g, f.marker) })
		if want := f.what == "a known unicast"; arrived != want {
			t.Errorf("%s from host a's container arrived at host b's: %v, want %v", f.what, arrived, want)
		}
	}
}

// checkLocalGateway: each container's gateway neighbour is its own host's
// bridge, although both bridges carry 10.77.0.1.
func checkLocalGateway(t *testing.T, hosts ...*vxHost) {
	for _, h := range hosts {
		if !ping(t, h.ctr, "10.77.0.1") {
			t.Fatalf("host %s's container does not reach its gateway", h.name)
		}
		var mac net.HardwareAddr
		inNetns(t, h.ctr, func() {
			ns, err := netlink.NeighList(0, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range ns {
				if n.IP.Equal(net.IPv4(10, 77, 0, 1)) {
					mac = n.HardwareAddr
				}
			}
		})
		if !bytes.Equal(mac, h.bridgeMAC) {
			t.Errorf("host %s's container has the gateway at %s, want its own bridge's %s", h.name, mac, h.bridgeMAC)
		}
	}
	if bytes.Equal(hosts[0].bridgeMAC, hosts[1].bridgeMAC) {
		t.Fatal("both bridges have the same MAC: the check proves nothing")
	}
}

// checkPeerEntries: the read-back sees a deleted FDB entry, the sync
// repairs it, and removing the peer cuts the container off until it is
// added again.
func checkPeerEntries(t *testing.T, a, b *vxHost) {
	ctx := context.Background()
	ipB := b.ep.Addresses[0].String()
	want := []model.VXLANPeer{b.peer()}
	a.do(t, func() {
		e, err := a.d.VXLANEntries(ctx, a.n, testVNI)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.Peers(); len(got) != 1 || got[0].String() != b.peer().String() {
			t.Fatalf("read back %v, want %v", got, want)
		}
		run(t, "bridge", "fdb", "del", b.ep.MAC.String(), "dev", model.VXLANName(testVNI), "dst", b.vtep.String(), "self")
		if e, err = a.d.VXLANEntries(ctx, a.n, testVNI); err != nil {
			t.Fatal(err)
		}
		if missing := e.Missing(want); len(missing) != 1 {
			t.Errorf("after the FDB entry was deleted, the read-back misses %v, want %v", missing, want)
		}
	})
	if ping(t, a.ctr, ipB) {
		t.Error("host a's container reaches host b's without the FDB entry")
	}
	a.do(t, func() {
		written, deleted, err := a.d.SyncPeers(ctx, a.n, testVNI, want)
		if err != nil || written != 1 || deleted != 0 {
			t.Fatalf("sync after the FDB entry was deleted: wrote %d, deleted %d, %v; want 1, 0", written, deleted, err)
		}
	})
	if !ping(t, a.ctr, ipB) {
		t.Error("host a's container does not reach host b's after the sync")
	}
	a.do(t, func() {
		if err := a.d.RemovePeer(ctx, a.n, testVNI, b.peer()); err != nil {
			t.Fatal(err)
		}
		e, err := a.d.VXLANEntries(ctx, a.n, testVNI)
		if err != nil || len(e.FDB)+len(e.Neigh) != 0 {
			t.Fatalf("entries after RemovePeer: %v, %v", e, err)
		}
	})
	if ping(t, a.ctr, ipB) {
		t.Error("host a's container reaches host b's after RemovePeer")
	}
	a.do(t, func() {
		if err := a.d.EnsurePeer(ctx, a.n, testVNI, b.peer()); err != nil {
			t.Fatal(err)
		}
	})
	if !ping(t, a.ctr, ipB) {
		t.Error("host a's container does not reach host b's after EnsurePeer")
	}
}

// checkVTEPFilter: host a accepts VXLAN from the VTEPs of its set only; the
// drops are the filter's (its DROP rule counts them).
func checkVTEPFilter(t *testing.T, a, b *vxHost) {
	ctx := context.Background()
	rogue := netip.MustParseAddr("198.19.77.9")
	for _, tc := range []struct {
		name    string
		allowed []netip.Addr
		reach   bool
	}{
		{"other-vtep-only", []netip.Addr{rogue}, false},
		{"empty", nil, false},
		{"both", []netip.Addr{rogue, b.vtep}, true},
		{"b-only", []netip.Addr{b.vtep}, true},
	} {
		func() {
			var dropsBefore int
			a.do(t, func() {
				if err := a.d.SyncVTEPFilter(ctx, model.DefaultVXLANPort, tc.allowed); err != nil {
					t.Fatal(err)
				}
				f, err := a.d.ReadVTEPFilter()
				if err != nil {
					t.Fatal(err)
				}
				want := slices.SortedFunc(slices.Values(tc.allowed), netip.Addr.Compare)
				if f.Port != model.DefaultVXLANPort || !slices.Equal(f.VTEPs, want) {
					t.Fatalf("%s: read back port %d VTEPs %v, want %d %v", tc.name, f.Port, f.VTEPs, model.DefaultVXLANPort, want)
				}
				dropsBefore = vtepDrops(t, a.firewall)
			})
			if got := ping(t, b.ctr, a.ep.Addresses[0].String()); got != tc.reach {
				t.Errorf("%s: host b's container reaches host a's: %v, want %v", tc.name, got, tc.reach)
			}
			var drops int
			a.do(t, func() { drops = vtepDrops(t, a.firewall) - dropsBefore })
			if tc.reach != (drops == 0) {
				t.Errorf("%s: the filter dropped %d packets from host b", tc.name, drops)
			}
		}()
	}
}

// vtepDrops reads the packet count of the filter's drop rule.
func vtepDrops(t *testing.T, firewall string) int {
	t.Helper()
	if firewall == model.FirewallNFTables {
		out := output(t, "nft", "list", "table", "ip", model.VXLANTableName("mynet-test"))
		_, rest, ok := strings.Cut(out, "counter packets ")
		n, err := strconv.Atoi(strings.Fields(rest + " x")[0])
		if !ok || err != nil {
			t.Fatalf("no drop counter in:\n%s", out)
		}
		return n
	}
	out, err := exec.Command("iptables", "-w", "-nvxL", model.VXLANChain("mynet-test")).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s\n%s", err, out, output(t, "nft", "list", "table", "ip", "filter"))
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "DROP" {
			n, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no DROP rule in:\n%s", out)
	return 0
}

// checkVXLANIdempotent: repeating every ensure changes nothing.
func checkVXLANIdempotent(t *testing.T, a, b *vxHost) {
	ctx := context.Background()
	a.do(t, func() {
		before := snapshot(t)
		dev, err := a.d.nl.LinkByName(model.VXLANName(testVNI))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.d.EnsureVXLAN(ctx, a.n, a.vx()); err != nil {
			t.Fatal(err)
		}
		if err := a.d.EnsurePeer(ctx, a.n, testVNI, b.peer()); err != nil {
			t.Fatal(err)
		}
		if err := a.d.SyncVTEPFilter(ctx, model.DefaultVXLANPort, []netip.Addr{b.vtep}); err != nil {
			t.Fatal(err)
		}
		written, deleted, err := a.d.SyncPeers(ctx, a.n, testVNI, []model.VXLANPeer{b.peer()})
		if err != nil || written+deleted != 0 {
			t.Errorf("second sync wrote %d and deleted %d entries (%v), want none", written, deleted, err)
		}
		again, err := a.d.nl.LinkByName(model.VXLANName(testVNI))
		if err != nil || again.Attrs().Index != dev.Attrs().Index {
			t.Errorf("the VXLAN device was made again: index %d, was %d (%v)", again.Attrs().Index, dev.Attrs().Index, err)
		}
		if after := snapshot(t); after != before {
			t.Errorf("repeated ensures changed the host:\n--- before\n%s--- after\n%s", before, after)
		}
	})
}

// ping reports whether an ICMP echo from ns to dst is answered, trying
// three times (the first may wait for ARP).
func ping(t *testing.T, ns netns.NsHandle, dst string) bool {
	t.Helper()
	ok := false
	inNetns(t, ns, func() {
		c, err := net.DialIP("ip4:icmp", nil, &net.IPAddr{IP: net.ParseIP(dst)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		marker := []byte("mynet-vxlan-" + dst)
		for range 3 {
			if _, err := c.Write(icmp4Echo(marker)); err != nil {
				continue // unreachable (ARP failed): try again
			}
			_ = c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
			buf := make([]byte, 1500)
			for {
				n, _, err := c.ReadFrom(buf) // without the IPv4 header, unlike Read
				if err != nil {
					break
				}
				if n >= 8 && buf[0] == 0 && bytes.HasSuffix(buf[:n], marker) {
					ok = true
					return
				}
			}
		}
	})
	return ok
}
