package bridge

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
)

const (
	eid2 = "dddddddddddd4444444444444444444444444444444444444444444444444444"
	eid3 = "eeeeeeeeeeee5555555555555555555555555555555555555555555555555555"
)

// spoofEndpoint is testEndpoint with its own MAC and addresses.
func spoofEndpoint(n model.Network, id string, mac string, addrs ...string) model.Endpoint {
	ep := testEndpoint(n, id)
	ep.MAC, _ = net.ParseMAC(mac)
	for _, a := range addrs {
		ep.Addresses = append(ep.Addresses, netip.MustParseAddr(a))
	}
	return ep
}

// nftDump renders one bridge table as read back through the nftables
// library: chains with their hooks, rules with handles, expressions,
// counters and comments, and the port map's elements. "" when the table
// does not exist. Handles are included on purpose: an ensure that
// rewrote rules, even identical ones, shows up as new handles.
func nftDump(t *testing.T, table string) string {
	t.Helper()
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == table }) {
		return ""
	}
	tb := &nftables.Table{Family: nftables.TableFamilyBridge, Name: table}
	var b strings.Builder
	fmt.Fprintf(&b, "table bridge %s\n", table)
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		fmt.Fprintf(&b, "  chain %s", ch.Name)
		if ch.Hooknum != nil {
			fmt.Fprintf(&b, " type %s hook %d priority %d policy %d", ch.Type, *ch.Hooknum, *ch.Priority, *ch.Policy)
		}
		b.WriteString("\n")
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			fmt.Fprintf(&b, "    rule %d %q:", r.Handle, cm)
			for _, e := range r.Exprs {
				fmt.Fprintf(&b, " %T%+v", e, e)
			}
			b.WriteString("\n")
		}
	}
	sets, err := c.GetSets(tb)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, e := range elems {
			lines = append(lines, "    element "+renderSpoofKey(s.Name, e.Key))
		}
		slices.Sort(lines)
		fmt.Fprintf(&b, "  set %s key length %d\n%s\n", s.Name, s.KeyType.Bytes, strings.Join(lines, "\n"))
	}
	return b.String()
}

// renderSpoofKey shows a set key as nft would: "veth" or "veth" . value.
func renderSpoofKey(set string, key []byte) string {
	name := fmt.Sprintf("%q", ifname(key))
	rest := key[min(len(key), 16):]
	switch set {
	case setMACs:
		return name + " . " + net.HardwareAddr(rest[:min(len(rest), 6)]).String()
	case setIPv4, setIPv6:
		a, _ := netip.AddrFromSlice(rest)
		return name + " . " + a.String()
	}
	return name
}

// spoofCounters returns the drop counters of the filter's rules by
// comment; the rules are shared, so a test counts with one attacker.
func spoofCounters(t *testing.T, table string) map[string]uint64 {
	t.Helper()
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	tb := &nftables.Table{Family: nftables.TableFamilyBridge, Name: table}
	rules, err := c.GetRules(tb, &nftables.Chain{Name: spoofBaseChain, Table: tb})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, r := range rules {
		cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				out[cm] += ctr.Packets
			}
		}
	}
	return out
}

func TestSpoofCheckLifecycle(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		ep1 := spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2", "fd00:1::2")
		ep2 := spoofEndpoint(n, eid2, "02:00:00:00:00:02", "10.1.0.3")
		table := d.SpoofTable()
		if table != "mynet_"+table[len("mynet_"):] || len(table) != len("mynet_")+6 || model.SpoofTableName("mynet") != "mynet" {
			t.Fatalf("table name %q (instance mynet-test), %q (instance mynet)", table, model.SpoofTableName("mynet"))
		}
		if got := nftDump(t, table); got != "" {
			t.Fatalf("table exists before any endpoint:\n%s", got)
		}

		if err := d.EnsureSpoofCheck(ep1); err != nil {
			t.Fatal(err)
		}
		one := nftDump(t, table)
		if err := d.EnsureSpoofCheck(ep1); err != nil {
			t.Fatal(err)
		}
		if again := nftDump(t, table); again != one {
			t.Fatalf("a repeated ensure changed the table:\n--- first\n%s--- second\n%s", one, again)
		}
		t.Logf("one endpoint:\n%s", one)
		if out, err := exec.Command("nft", "list", "table", "bridge", table).CombinedOutput(); err == nil {
			t.Logf("as nft shows it:\n%s", out) // nft is optional: mynet does not need it
		}
		v1 := fmt.Sprintf("%q", ep1.HostVeth)
		for _, want := range []string{
			"chain prerouting type filter hook 0 priority -300 policy 1", // NF_BR_PRE_ROUTING, accept
			"mynet anti-spoofing v" + spoofVersion,
			"element " + v1 + "\n",
			"element " + v1 + " . 02:00:00:00:00:01",
			"element " + v1 + " . 10.1.0.2",
			"element " + v1 + " . fd00:1::2",
		} {
			if !strings.Contains(one, want) {
				t.Errorf("table lacks %q", want)
			}
		}

		// A second endpoint adds its elements and leaves the rules (same
		// handles) and the first one's elements alone.
		if err := d.EnsureSpoofCheck(ep2); err != nil {
			t.Fatal(err)
		}
		two := nftDump(t, table)
		for _, l := range strings.Split(one, "\n") {
			if !strings.Contains(two, l) {
				t.Errorf("adding endpoint 2 changed %q", l)
			}
		}

		// New inputs rewrite the endpoint's chain.
		moved := ep1
		moved.Addresses = []netip.Addr{netip.MustParseAddr("10.1.0.9")}
		if err := d.EnsureSpoofCheck(moved); err != nil {
			t.Fatal(err)
		}
		if got := nftDump(t, table); !strings.Contains(got, v1+" . 10.1.0.9") || strings.Contains(got, v1+" . 10.1.0.2") || strings.Contains(got, v1+" . fd00:1::2") {
			t.Errorf("ensure with a new address did not replace the elements:\n%s", got)
		}

		for range 2 { // removes are idempotent
			if err := d.RemoveSpoofCheck(ep1); err != nil {
				t.Fatal(err)
			}
		}
		got := nftDump(t, table)
		if strings.Contains(got, ep1.HostVeth) || !strings.Contains(got, fmt.Sprintf("element %q . 10.1.0.3", ep2.HostVeth)) {
			t.Fatalf("after removing endpoint 1:\n%s", got)
		}
		for range 2 {
			if err := d.RemoveSpoofCheck(ep2); err != nil {
				t.Fatal(err)
			}
		}
		// The emptied table stays (creating it again would cost the next
		// container an RCU grace period) until the network goes.
		if got := nftDump(t, table); strings.Contains(got, "mnv") {
			t.Fatalf("endpoint elements left after removing the last endpoint:\n%s", got)
		}
		if err := d.removeEmptySpoofTable(); err != nil {
			t.Fatal(err)
		}
		if got := nftDump(t, table); got != "" {
			t.Fatalf("table left after removing it empty:\n%s", got)
		}
	})
}

func TestSpoofCheckInvalid(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		for name, modify := range map[string]func(*model.Endpoint){
			"no MAC":        func(e *model.Endpoint) { e.MAC = nil },
			"multicast MAC": func(e *model.Endpoint) { e.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} },
			"veth name":     func(e *model.Endpoint) { e.HostVeth = "bad+" },
			"no address":    func(e *model.Endpoint) { e.Addresses = []netip.Addr{{}} },
			"0.0.0.0":       func(e *model.Endpoint) { e.Addresses = []netip.Addr{netip.IPv4Unspecified()} },
			"short ID":      func(e *model.Endpoint) { e.ID = "abc" },
		} {
			ep := spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2")
			modify(&ep)
			if err := d.EnsureSpoofCheck(ep); err == nil {
				t.Errorf("%s: EnsureSpoofCheck succeeded", name)
			}
		}
		if got := nftDump(t, d.SpoofTable()); got != "" {
			t.Fatalf("invalid endpoints left a table:\n%s", got)
		}
	})
}

func TestSpoofOrphans(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		eps := []model.Endpoint{
			spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2"),
			spoofEndpoint(n, eid2, "02:00:00:00:00:02", "10.1.0.3"),
			spoofEndpoint(n, eid3, "02:00:00:00:00:03", "10.1.0.4"),
		}
		for _, ep := range eps {
			if err := d.EnsureSpoofCheck(ep); err != nil {
				t.Fatal(err)
			}
		}
		// Another instance's table must survive.
		// Its own netlink handle (in this thread's namespace), so that
		// closing it leaves d's open.
		other, err := New(Config{Instance: "someone-else", IPv4: d.fw4.(*iptablesFirewall).ipt})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if err := other.EnsureSpoofCheck(eps[1]); err != nil {
			t.Fatal(err)
		}
		otherBefore := nftDump(t, other.SpoofTable())

		if err := d.removeSpoofOrphans(map[string]bool{eid1: true}, true); err != nil {
			t.Fatal(err)
		}
		got := nftDump(t, d.SpoofTable())
		for id, want := range map[string]bool{eid1: true, eid2: false, eid3: false} {
			veth, _ := model.VethNames(id)
			if strings.Contains(got, veth) != want {
				t.Errorf("endpoint %s: elements present = %v, want %v", id[:12], !want, want)
			}
		}
		if err := d.removeSpoofOrphans(map[string]bool{eid1: true}, true); err != nil { // nothing left to do
			t.Fatal(err)
		}
		if again := nftDump(t, d.SpoofTable()); again != got {
			t.Fatalf("a repeated orphan removal changed the table:\n%s", again)
		}
		if err := d.removeSpoofOrphans(nil, true); err != nil {
			t.Fatal(err)
		}
		if got := nftDump(t, d.SpoofTable()); got != "" {
			t.Fatalf("table left after removing every orphan:\n%s", got)
		}
		if got := nftDump(t, other.SpoofTable()); got != otherBefore {
			t.Fatalf("another instance's table changed:\n--- before\n%s--- after\n%s", otherBefore, got)
		}
		if err := other.RemoveSpoofCheck(eps[1]); err != nil {
			t.Fatal(err)
		}
		if err := other.removeEmptySpoofTable(); err != nil {
			t.Fatal(err)
		}
		if got := nftDump(t, other.SpoofTable()); got != "" {
			t.Fatalf("other table left:\n%s", got)
		}
	})
}

// TestFailedEnsureEndpointKeepsFilter: an EnsureEndpoint that fails after
// the anti-spoofing step removes the veth's elements only if it added
// them: an endpoint that was filtered before (a repair) stays filtered.
func TestFailedEnsureEndpointKeepsFilter(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		live := spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2")
		fresh := spoofEndpoint(n, eid2, "02:00:00:00:00:02", "10.1.0.3")
		live.AntiSpoofing, fresh.AntiSpoofing = true, true
		if err := d.EnsureEndpoint(ctx, live); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t) + nftDump(t, d.SpoofTable())
		if err := failpoint.Enable("bridge.endpoint.filter=error"); err != nil {
			t.Fatal(err)
		}
		for _, ep := range []model.Endpoint{live, fresh} {
			if err := d.EnsureEndpoint(ctx, ep); err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("EnsureEndpoint(%s) = %v, want the injected failure", ep.HostVeth, err)
			}
		}
		failpoint.Enable("")
		if after := snapshot(t) + nftDump(t, d.SpoofTable()); after != before {
			t.Fatalf("failed ensures changed what they found:\n--- found\n%s--- left\n%s", before, after)
		}
		if err := d.DeleteEndpoint(ctx, live); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSpoofRepair: the fingerprint is stable, notices rules flushed and
// elements deleted or added from outside, and EnsureSpoofCheck puts the
// table back as it was.
func TestSpoofRepair(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		eps := []model.Endpoint{
			spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2"),
			spoofEndpoint(n, eid2, "02:00:00:00:00:02", "10.1.0.3"),
		}
		fp := func() string {
			t.Helper()
			s, err := d.SpoofFingerprint()
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(s) // fmt sorts map keys
		}
		if got := fp(); got != "map[]" {
			t.Fatalf("fingerprint without a table: %q", got)
		}
		for _, ep := range eps {
			if err := d.EnsureSpoofCheck(ep); err != nil {
				t.Fatal(err)
			}
		}
		good := fp()
		t.Logf("fingerprint:\n%s", good)
		if fp() != good {
			t.Fatal("fingerprint changes with nothing changing")
		}
		o := spoofObjectsFor(d.SpoofTable())
		for name, damage := range map[string]func(c *nftables.Conn){
			"flush the base chain": func(c *nftables.Conn) { c.FlushChain(o.base) },
			"delete a ports element": func(c *nftables.Conn) {
				if err := c.SetDeleteElements(o.sets[setPorts], []nftables.SetElement{{Key: spoofIfnameKey(eps[1].HostVeth)}}); err != nil {
					t.Fatal(err)
				}
			},
			"delete an address element": func(c *nftables.Conn) {
				key := append(spoofIfnameKey(eps[0].HostVeth), 10, 1, 0, 2)
				if err := c.SetDeleteElements(o.sets[setIPv4], []nftables.SetElement{{Key: key}}); err != nil {
					t.Fatal(err)
				}
			},
			"give an endpoint another address": func(c *nftables.Conn) {
				key := append(spoofIfnameKey(eps[0].HostVeth), 10, 1, 0, 99)
				if err := c.SetAddElements(o.sets[setIPv4], []nftables.SetElement{{Key: key}}); err != nil {
					t.Fatal(err)
				}
			},
			"delete the table": func(c *nftables.Conn) { c.DelTable(o.table) },
		} {
			c, err := nftables.New()
			if err != nil {
				t.Fatal(err)
			}
			damage(c)
			if err := c.Flush(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if fp() == good {
				t.Errorf("%s: fingerprint unchanged", name)
			}
			for _, ep := range eps {
				if err := d.EnsureSpoofCheck(ep); err != nil {
					t.Fatalf("%s: repair: %v", name, err)
				}
			}
			if got := fp(); got != good {
				t.Errorf("%s: after repair:\n%s\nwant:\n%s", name, got, good)
			}
		}
		if err := d.removeSpoofOrphans(nil, true); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSpoofScale: the cost of an ensure or remove does not grow with the
// number of endpoints (each reads a fixed number of objects), checked
// loosely: the last batch may not be much slower than the first.
func TestSpoofScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	withDataplane(t, "", func(d *Dataplane) {
		n := testNetwork(nid1, "10.1.0.0/16", "10.1.0.1/16")
		const total, batch = 300, 30
		var first, last time.Duration
		for i := range total {
			ep := spoofEndpoint(n, fmt.Sprintf("%012x%052d", i+1, 0), fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff),
				netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).String())
			start := time.Now()
			if err := d.EnsureSpoofCheck(ep); err != nil {
				t.Fatal(err)
			}
			switch took := time.Since(start); {
			case i < batch:
				first += took
			case i >= total-batch:
				last += took
			}
		}
		start := time.Now()
		fp, err := d.SpoofFingerprint()
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		start = time.Now()
		if again, err := d.SpoofFingerprint(); err != nil || !maps.Equal(again, fp) {
			t.Fatalf("second fingerprint differs (%v)", err)
		}
		cached := time.Since(start)
		t.Logf("%d endpoints: ensure %v each for the first %d, %v for the last %d; fingerprint %v (%d digests), %v while nothing changed",
			total, first/batch, batch, last/batch, batch, took, len(fp), cached)
		if cached > 100*time.Millisecond {
			t.Errorf("an unchanged ruleset took %v to fingerprint", cached)
		}
		if last > 10*first+50*time.Millisecond {
			t.Errorf("ensure slows down with the number of endpoints: %v for the last %d, %v for the first", last, batch, first)
		}
		start = time.Now()
		if err := d.removeSpoofOrphans(nil, true); err != nil {
			t.Fatal(err)
		}
		t.Logf("removing all %d: %v", total, time.Since(start))
	})
}

// TestSpoofTraffic builds a bridge with two "containers" (veth ends in
// namespaces of their own), then has the attacker write forged frames on
// its eth0 through a raw AF_PACKET socket, as any container with
// CAP_NET_RAW can. A raw socket in the victim's namespace records what
// reaches it; the host's neighbour entries and the bridge's forwarding
// table show whether a poisoning worked. The same frames are then sent
// again with the attacker's filter removed: they must all arrive and
// poison, which proves the first round's silence is the filter's doing.
func TestSpoofTraffic(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		victim := spoofEndpoint(n, eid1, "02:00:00:00:00:0a", "10.1.0.10", "fd00:1::10")
		attacker := spoofEndpoint(n, eid2, "02:00:00:00:00:0b", "10.1.0.11", "fd00:1::11")
		vNS := plugContainer(t, d, victim)
		aNS := plugContainer(t, d, attacker)
		for _, ep := range []model.Endpoint{victim, attacker} {
			if err := d.EnsureSpoofCheck(ep); err != nil {
				t.Fatal(err)
			}
		}
		br, err := d.nl.LinkByName(n.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeSysctl("net/ipv4/neigh/"+n.Bridge+"/locktime", "0"); err != nil {
			t.Fatal(err)
		}

		vIP, vIP6 := victim.Addresses[0], victim.Addresses[1]
		aIP, aIP6 := attacker.Addresses[0], attacker.Addresses[1]
		vMAC, aMAC := victim.MAC, attacker.MAC
		bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		allNodes := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
		ll := netip.MustParseAddr("fe80::bad:1")
		ff02 := netip.MustParseAddr("ff02::1")
		limited := netip.AddrFrom4([4]byte{255, 255, 255, 255})
		udp4 := func(src netip.Addr, m []byte) []byte { return ipv4UDP(src, vIP, m) }

		// badARP is an otherwise valid ARP request from the attacker with
		// one header byte changed.
		badARP := func(i int, b byte) func([]byte) []byte {
			return func(m []byte) []byte {
				p := arp(1, aMAC, aIP, make(net.HardwareAddr, 6), vIP, m)
				p[i] = b
				return ether(bcast, aMAC, unix.ETH_P_ARP, p)
			}
		}
		type probe struct {
			name  string
			frame func(marker []byte) []byte
			rule  string // the rule that must drop it; "" for a control that must pass
		}
		probes := []probe{
			{"IPv4 from own address (control)", func(m []byte) []byte { return ether(vMAC, aMAC, unix.ETH_P_IP, udp4(aIP, m)) }, ""},
			{"ARP request from own address (control)", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_ARP, arp(1, aMAC, aIP, make(net.HardwareAddr, 6), vIP, m))
			}, ""},
			{"IPv6 from own address (control)", func(m []byte) []byte { return ether(vMAC, aMAC, unix.ETH_P_IPV6, ipv6UDP(aIP6, vIP6, m)) }, ""},
			{"IPv6 from link-local (control)", func(m []byte) []byte { return ether(vMAC, aMAC, unix.ETH_P_IPV6, ipv6UDP(ll, vIP6, m)) }, ""},
			{"neighbour advertisement for own address (control)", func(m []byte) []byte {
				return ether(allNodes, aMAC, unix.ETH_P_IPV6, neighAdvert(ll, ff02, aIP6, aMAC, m))
			}, ""},
			{"DHCP discover from 0.0.0.0 (control)", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_IP, ipv4UDPTo(netip.IPv4Unspecified(), limited, 67, m))
			}, ""},
			{"ARP probe from 0.0.0.0 (control)", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_ARP, arp(1, aMAC, netip.IPv4Unspecified(), make(net.HardwareAddr, 6), aIP, m))
			}, ""},
			{"duplicate address detection from :: (control)", func(m []byte) []byte {
				return ether(solicited(aIP6), aMAC, unix.ETH_P_IPV6, neighSolicit(netip.IPv6Unspecified(), solicitedIP(aIP6), aIP6, nil, m))
			}, ""},

			{"IPv4 from the victim's address", func(m []byte) []byte { return ether(vMAC, aMAC, unix.ETH_P_IP, udp4(vIP, m)) }, "IPv4 source is not the endpoint's"},
			{"IPv4 from an unassigned address", func(m []byte) []byte {
				return ether(vMAC, aMAC, unix.ETH_P_IP, udp4(netip.MustParseAddr("10.1.0.99"), m))
			}, "IPv4 source is not the endpoint's"},
			{"IPv4 from 0.0.0.0 to the victim", func(m []byte) []byte {
				return ether(vMAC, aMAC, unix.ETH_P_IP, udp4(netip.IPv4Unspecified(), m))
			}, "IPv4 from 0.0.0.0 not to 255.255.255.255"},
			{"IPv4 from 0.0.0.0, broadcast but not UDP", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_IP, ipv4(netip.IPv4Unspecified(), limited, unix.IPPROTO_ICMP, icmp4Echo(m)))
			}, "IPv4 from 0.0.0.0 not UDP"},
			{"IPv4 from 0.0.0.0, broadcast UDP but not to port 67", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_IP, ipv4UDPTo(netip.IPv4Unspecified(), limited, 68, m))
			}, "IPv4 from 0.0.0.0 not to port 67"},
			{"ARP for another hardware type", badARP(1, 6), "ARP hardware type is not Ethernet"},
			{"ARP for another protocol", badARP(2, 0x86), "ARP protocol is not IPv4"},
			{"ARP with another hardware address length", badARP(4, 8), "ARP hardware address length is not 6"},
			{"ARP with another protocol address length", badARP(5, 16), "ARP protocol address length is not 4"},
			{"ARP reply claiming the victim's address", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_ARP, arp(2, aMAC, vIP, aMAC, vIP, m))
			}, "ARP sender address is not the endpoint's"},
			{"ARP with the victim's sender MAC", func(m []byte) []byte {
				return ether(bcast, aMAC, unix.ETH_P_ARP, arp(1, vMAC, aIP, make(net.HardwareAddr, 6), vIP, m))
			}, "ARP sender MAC is not the endpoint's"},
			{"IPv6 from the victim's address", func(m []byte) []byte { return ether(vMAC, aMAC, unix.ETH_P_IPV6, ipv6UDP(vIP6, vIP6, m)) }, "IPv6 source is not the endpoint's, link-local or ::"},
			{"neighbour advertisement for the victim's address", func(m []byte) []byte {
				return ether(allNodes, aMAC, unix.ETH_P_IPV6, neighAdvert(ll, ff02, vIP6, aMAC, m))
			}, "IPv6 neighbour advertisement for an address not the endpoint's"},
			{"neighbour advertisement for own address with the victim's MAC", func(m []byte) []byte {
				return ether(allNodes, aMAC, unix.ETH_P_IPV6, neighAdvert(ll, ff02, aIP6, vMAC, m))
			}, "IPv6 neighbour advertisement with another MAC"},
			{"neighbour solicitation with the victim's MAC", func(m []byte) []byte {
				return ether(solicited(vIP6), aMAC, unix.ETH_P_IPV6, neighSolicit(aIP6, solicitedIP(vIP6), vIP6, vMAC, m))
			}, "IPv6 neighbour solicitation with another MAC"},
			{"redirect", func(m []byte) []byte {
				body := append(append(make([]byte, 4), aIP6.AsSlice()...), netip.MustParseAddr("2001:db8::1").AsSlice()...)
				return ether(vMAC, aMAC, unix.ETH_P_IPV6, icmp6(ll, vIP6, 137, append(body, ndOpt(253, m)...)))
			}, "IPv6 redirect"},
			{"router advertisement", func(m []byte) []byte {
				return ether(allNodes, aMAC, unix.ETH_P_IPV6, icmp6(ll, ff02, 134, append(make([]byte, 12), ndOpt(253, m)...)))
			}, "IPv6 router advertisement"},
			{"802.1Q-tagged IPv4 from own address", func(m []byte) []byte {
				return ether(vMAC, aMAC, unix.ETH_P_8021Q, append([]byte{0, 5, 8, 0}, udp4(aIP, m)...))
			}, "not ARP, IPv4 or IPv6 (VLAN tags, LLC)"},
			// Last: without the filter it moves the victim's MAC to the
			// attacker's port in the bridge's forwarding table.
			{"the victim's source MAC", func(m []byte) []byte {
				return ether(bcast, vMAC, unix.ETH_P_IP, ipv4UDP(aIP, netip.MustParseAddr("10.1.0.255"), m))
			}, "source MAC is not the endpoint's"},
		}

		// The victim knows the attacker, so that it never broadcasts an ARP
		// request or neighbour solicitation of its own during a round: that
		// would repair the host's poisoned entries in the control round.
		vnl, err := netlink.NewHandleAt(vNS)
		if err != nil {
			t.Fatal(err)
		}
		defer vnl.Close()
		vlink, err := vnl.LinkByName(victim.ContainerVeth)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{aIP, aIP6} {
			family := netlink.FAMILY_V4
			if a.Is6() {
				family = netlink.FAMILY_V6
			}
			if err := vnl.NeighSet(&netlink.Neigh{LinkIndex: vlink.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: aMAC}); err != nil {
				t.Fatal(err)
			}
		}
		// EnsureEndpoint queued the forgetting of the host's neighbour
		// entries for the endpoints' addresses; it must not run in the
		// middle of a round.
		waitForCleanups(d)
		rx := openPacketSocket(t, vNS, victim.ContainerVeth)
		tx := openPacketSocket(t, aNS, attacker.ContainerVeth)
		neighs := []netip.Addr{vIP, vIP6}
		round := func(protected bool) {
			t.Helper()
			// The host knows the victim, as it would after any traffic.
			for _, a := range neighs {
				family := netlink.FAMILY_V4
				if a.Is6() {
					family = netlink.FAMILY_V6
				}
				if err := d.nl.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: family, State: netlink.NUD_STALE, IP: a.AsSlice(), HardwareAddr: vMAC}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(20 * time.Millisecond) // past the entries' update time, for locktime 0
			rx.drain()
			before := spoofCounters(t, d.SpoofTable())
			markers := map[string][]byte{}
			for i, p := range probes {
				m := []byte(fmt.Sprintf("MYNET%03d%v", i, protected))
				markers[p.name] = m
				tx.send(t, p.frame(m))
			}
			// Without the filter, the bridge moves the victim's MAC to the
			// attacker's port at once; look before the victim sends again.
			stolen := false
			for deadline := time.Now().Add(200 * time.Millisecond); !stolen && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				stolen = fdbPort(t, d.nl, br.Attrs().Index, vMAC) == attacker.HostVeth
			}
			// Wait for every frame that should pass (slow machines), then a
			// little longer for any that should not.
			var mustArrive [][]byte
			for _, p := range probes {
				if p.rule == "" || !protected {
					mustArrive = append(mustArrive, markers[p.name])
				}
			}
			got := rx.collectUntil(mustArrive, 5*time.Second, 300*time.Millisecond)
			for _, p := range probes {
				arrived := slices.ContainsFunc(got, func(f []byte) bool { return bytes.Contains(f, markers[p.name]) })
				want := p.rule == "" || !protected
				if arrived != want {
					t.Errorf("protected=%v: %s: arrived at the victim = %v, want %v", protected, p.name, arrived, want)
				}
			}
			for _, a := range neighs {
				mac := hostNeighbour(t, d.nl, br.Attrs().Index, a)
				if want := vMAC; protected && mac.String() != want.String() {
					t.Errorf("protected: the host's neighbour entry for %s is %s, want the victim's %s", a, mac, want)
				}
				if !protected && mac.String() != aMAC.String() {
					t.Errorf("unprotected (control): the host's neighbour entry for %s is %s, want it poisoned to %s; the probe does not test what it claims", a, mac, aMAC)
				}
			}
			if stolen = stolen || fdbPort(t, d.nl, br.Attrs().Index, vMAC) == attacker.HostVeth; stolen != !protected {
				t.Errorf("protected=%v: the bridge forwards the victim's MAC to the attacker's port = %v, want %v", protected, stolen, !protected)
			}
			if protected {
				after := spoofCounters(t, d.SpoofTable())
				want := map[string]uint64{}
				for _, p := range probes {
					if p.rule != "" {
						want[p.rule]++
					}
				}
				for rule, n := range want {
					if got := after[rule] - before[rule]; got < n {
						t.Errorf("rule %q counted %d drops, want at least %d", rule, got, n)
					}
				}
				t.Logf("drop counters of the filter: %v", after)
			}
		}
		round(true)
		if t.Failed() {
			t.Logf("ruleset:\n%s", nftDump(t, d.SpoofTable()))
			return
		}
		if err := d.RemoveSpoofCheck(attacker); err != nil {
			t.Fatal(err)
		}
		round(false)

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
		if got := nftDump(t, d.SpoofTable()); got != "" {
			t.Fatalf("table left after the network's deletion:\n%s", got)
		}
	})
}

// plugContainer creates the endpoint's veth pair and moves its container
// end into a new network namespace as eth0 with the endpoint's addresses,
// the way the engine does. The namespace dies with the test.
func plugContainer(t *testing.T, d *Dataplane, ep model.Endpoint) netns.NsHandle {
	t.Helper()
	if err := d.EnsureEndpoint(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t)
	l, err := d.nl.LinkByName(ep.ContainerVeth)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.nl.LinkSetNsFd(l, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if l, err = h.LinkByName(ep.ContainerVeth); err != nil {
		t.Fatal(err)
	}
	for _, a := range ep.Addresses {
		bits := 24
		if a.Is6() {
			bits = 64
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	// Wait for the host end's carrier: until then the bridge drops.
	deadline := time.Now().Add(5 * time.Second)
	for {
		host, err := d.nl.LinkByName(ep.HostVeth)
		if err == nil && host.Attrs().OperState == netlink.OperUp {
			return ns
		}
		if time.Now().After(deadline) {
			t.Fatalf("host veth %s not up: %v", ep.HostVeth, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newNetns creates a network namespace without leaving the calling
// (locked) thread in it.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(cur); err != nil {
		t.Fatalf("back to the test namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// packetSocket is a raw AF_PACKET socket bound to one interface.
type packetSocket struct {
	fd      int
	ifindex int
}

// openPacketSocket opens the socket inside ns (a socket stays in the
// namespace it was created in) and binds it to ifname there.
func openPacketSocket(t *testing.T, ns netns.NsHandle, ifname string) *packetSocket {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	fd, serr := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	ifi, ierr := net.InterfaceByName(ifname)
	if err := netns.Set(cur); err != nil {
		t.Fatalf("back to the test namespace: %v", err)
	}
	if serr != nil || ierr != nil {
		t.Fatalf("packet socket on %s: %v %v", ifname, serr, ierr)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &packetSocket{fd: fd, ifindex: ifi.Index}
}

func (s *packetSocket) send(t *testing.T, frame []byte) {
	t.Helper()
	to := &unix.SockaddrLinklayer{Ifindex: s.ifindex, Protocol: htons(binary.BigEndian.Uint16(frame[12:14])), Halen: 6}
	copy(to.Addr[:], frame[:6])
	if err := unix.Sendto(s.fd, frame, 0, to); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// collectUntil returns the frames received (not sent) until frames
// containing each of markers have arrived, plus extra, or until max.
func (s *packetSocket) collectUntil(markers [][]byte, max, extra time.Duration) [][]byte {
	var out [][]byte
	deadline := time.Now().Add(max)
	missing := slices.Clone(markers)
	complete := false
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		if !complete && len(missing) == 0 {
			complete = true
			if end := time.Now().Add(extra); end.Before(deadline) {
				deadline = end
			}
		}
		n, from, err := unix.Recvfrom(s.fd, buf, 0) // SO_RCVTIMEO bounds the wait
		if err != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f := slices.Clone(buf[:n])
		out = append(out, f)
		missing = slices.DeleteFunc(missing, func(m []byte) bool { return bytes.Contains(f, m) })
	}
	return out
}

func (s *packetSocket) drain() { s.collectUntil(nil, 100*time.Millisecond, 0) }

// waitForCleanups returns once the cleanups the Dataplane queued so far
// have run: its janitor runs them in order.
func waitForCleanups(d *Dataplane) {
	done := make(chan struct{})
	d.later(func(*netlink.Handle) { close(done) })
	<-done
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func hostNeighbour(t *testing.T, nl *netlink.Handle, index int, a netip.Addr) net.HardwareAddr {
	t.Helper()
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := nl.NeighList(index, family)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
			return n.HardwareAddr
		}
	}
	return nil
}

// fdbPort returns the name of the bridge port the bridge has learned mac
// on, "" if none.
func fdbPort(t *testing.T, nl *netlink.Handle, bridgeIndex int, mac net.HardwareAddr) string {
	t.Helper()
	entries, err := nl.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.HardwareAddr.String() != mac.String() || e.MasterIndex != bridgeIndex && e.MasterIndex != 0 {
			continue
		}
		if l, err := nl.LinkByIndex(e.LinkIndex); err == nil && l.Attrs().MasterIndex == bridgeIndex {
			return l.Attrs().Name
		}
	}
	return ""
}

// Frame builders. Every frame carries a marker the receiver looks for:
// inside the UDP payload, after the ARP body (Ethernet padding), or in an
// ND option of an unassigned type, which receivers ignore.

func ether(dst, src net.HardwareAddr, etype uint16, payload []byte) []byte {
	f := append(append(slices.Clone([]byte(dst)), src...), byte(etype>>8), byte(etype))
	return append(f, payload...)
}

func arp(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr, marker []byte) []byte {
	p := []byte{0, 1, 8, 0, 6, 4, byte(op >> 8), byte(op)}
	p = append(append(append(append(append(p, sha...), spa.AsSlice()...), tha...), tpa.AsSlice()...), marker...)
	return p
}

// ipv4UDP is a UDP datagram to port 9 (discard).
func ipv4UDP(src, dst netip.Addr, data []byte) []byte { return ipv4UDPTo(src, dst, 9, data) }

func ipv4UDPTo(src, dst netip.Addr, port uint16, data []byte) []byte {
	udp := binary.BigEndian.AppendUint16(nil, 40000)
	udp = binary.BigEndian.AppendUint16(udp, port)
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(data)))
	udp = append(binary.BigEndian.AppendUint16(udp, 0), data...) // no checksum
	return ipv4(src, dst, unix.IPPROTO_UDP, udp)
}

func ipv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	h := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0}
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h = append(append(h, src.AsSlice()...), dst.AsSlice()...)
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, payload...)
}

// icmp4Echo is an ICMP echo request carrying data.
func icmp4Echo(data []byte) []byte {
	m := append([]byte{8, 0, 0, 0, 0, 1, 0, 1}, data...)
	binary.BigEndian.PutUint16(m[2:], checksum(m))
	return m
}

func ipv6(src, dst netip.Addr, next byte, payload []byte) []byte {
	h := []byte{0x60, 0, 0, 0, 0, 0, next, 255}
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	return append(append(append(h, src.AsSlice()...), dst.AsSlice()...), payload...)
}

// l4sum is the checksum of an IPv6 upper-layer message.
func l4sum(src, dst netip.Addr, next byte, msg []byte) uint16 {
	pseudo := append(append([]byte{}, src.AsSlice()...), dst.AsSlice()...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(msg)))
	pseudo = append(pseudo, 0, 0, 0, next)
	return checksum(append(pseudo, msg...))
}

func ipv6UDP(src, dst netip.Addr, data []byte) []byte {
	udp := binary.BigEndian.AppendUint16(nil, 40000)
	udp = binary.BigEndian.AppendUint16(udp, 9)
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(data)))
	udp = append(binary.BigEndian.AppendUint16(udp, 0), data...)
	binary.BigEndian.PutUint16(udp[6:], l4sum(src, dst, unix.IPPROTO_UDP, udp))
	return ipv6(src, dst, unix.IPPROTO_UDP, udp)
}

// icmp6 builds an IPv6 packet (hop limit 255, as ND requires) carrying an
// ICMPv6 message of type typ, code 0, with body after the checksum.
func icmp6(src, dst netip.Addr, typ byte, body []byte) []byte {
	msg := append([]byte{typ, 0, 0, 0}, body...)
	binary.BigEndian.PutUint16(msg[2:], l4sum(src, dst, unix.IPPROTO_ICMPV6, msg))
	return ipv6(src, dst, unix.IPPROTO_ICMPV6, msg)
}

// neighAdvert is an unsolicited neighbour advertisement with the override
// flag: "target is at mac", which replaces existing cache entries.
func neighAdvert(src, dst, target netip.Addr, mac net.HardwareAddr, marker []byte) []byte {
	body := append([]byte{0x20, 0, 0, 0}, target.AsSlice()...)
	body = append(body, ndOpt(2, mac)...)
	return icmp6(src, dst, 136, append(body, ndOpt(253, marker)...))
}

// neighSolicit asks for target; mac, when set, goes in a source link-layer
// address option (none from ::, as for duplicate address detection).
func neighSolicit(src, dst, target netip.Addr, mac net.HardwareAddr, marker []byte) []byte {
	body := append([]byte{0, 0, 0, 0}, target.AsSlice()...)
	if mac != nil {
		body = append(body, ndOpt(1, mac)...)
	}
	return icmp6(src, dst, 135, append(body, ndOpt(253, marker)...))
}

// solicitedIP and solicited are a's solicited-node multicast group and its
// MAC.
func solicitedIP(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

func solicited(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, 0xff, b[13], b[14], b[15]}
}

// ndOpt is an ND option padded to 8 bytes.
func ndOpt(typ byte, data []byte) []byte {
	n := (2 + len(data) + 7) / 8
	o := make([]byte, 8*n)
	o[0], o[1] = typ, byte(n)
	copy(o[2:], data)
	return o
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// TestSpoofUpgrade: a table of the previous layout (a verdict map jumping
// to a chain per endpoint) is replaced by the current one on the first
// ensure, in one batch.
func TestSpoofUpgrade(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		ep := spoofEndpoint(n, eid1, "02:00:00:00:00:01", "10.1.0.2")
		o := spoofObjectsFor(d.SpoofTable())
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		c.AddTable(o.table)
		c.AddChain(o.base)
		old := &nftables.Chain{Name: "ep_" + eid1[:12], Table: o.table}
		c.AddChain(old)
		c.AddRule(&nftables.Rule{Table: o.table, Chain: old, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		vmap := &nftables.Set{Table: o.table, Name: setPorts, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
		if err := c.AddSet(vmap, []nftables.SetElement{{Key: spoofIfnameKey(ep.HostVeth), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: old.Name}}}); err != nil {
			t.Fatal(err)
		}
		c.AddRule(&nftables.Rule{Table: o.table, Chain: o.base, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: vmap.Name, SetID: vmap.ID},
		}})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := d.EnsureSpoofCheck(ep); err != nil {
			t.Fatal(err)
		}
		got := nftDump(t, d.SpoofTable())
		for _, want := range []string{"mynet anti-spoofing v" + spoofVersion, fmt.Sprintf("element %q . 10.1.0.2", ep.HostVeth)} {
			if !strings.Contains(got, want) {
				t.Errorf("after the upgrade the table lacks %q:\n%s", want, got)
			}
		}
		if strings.Contains(got, "ep_") {
			t.Errorf("the old layout survived the upgrade:\n%s", got)
		}
		if err := d.removeSpoofOrphans(nil, true); err != nil {
			t.Fatal(err)
		}
	})
}
