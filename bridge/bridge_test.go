package bridge

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/netutil/nstest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

const (
	nid1 = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111"
	nid2 = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222"
	eid1 = "cccccccccccc3333333333333333333333333333333333333333333333333333"
)

func testNetwork(id, subnet, gw string) model.Network {
	return model.Network{
		ID: id, Bridge: model.BridgeName(id), MTU: 1450, ICC: true, Masquerade: true,
		IPv4: []model.Subnet{{Pool: netip.MustParsePrefix(subnet), Gateway: netip.MustParsePrefix(gw)}},
	}
}

func testEndpoint(n model.Network, id string) model.Endpoint {
	host, ctr := model.VethNames(id)
	return model.Endpoint{NetworkID: n.ID, ID: id, Bridge: n.Bridge, HostVeth: host, ContainerVeth: ctr,
		MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, MTU: n.MTU}
}

// withDataplane runs fn in a fresh network namespace with a Dataplane bound
// to it. The netlink handle is opened inside the namespace; iptables child
// processes inherit it from the locked thread.
func withDataplane(t testing.TB, failAt string, fn func(d *Dataplane)) {
	if err := failpoint.Enable(failAt); err != nil {
		t.Fatal(err)
	}
	defer failpoint.Enable("")
	nstest.RequireCommand(t, "iptables")
	nstest.Run(t, func() {
		nl, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		// A host always has the filter and nat tables (dockerd creates
		// them) and usually mangle; with iptables-nft a fresh namespace
		// has them only once used.
		for _, cmd := range []string{"iptables", "ip6tables"} {
			for _, table := range []string{"filter", "nat", "mangle"} {
				run(t, cmd, "-t", table, "-N", "PRIME")
				run(t, cmd, "-t", table, "-X", "PRIME")
			}
		}
		d, err := New(Config{Instance: "mynet-test", Netlink: nl})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		fn(d)
	})
}

// snapshot is everything mynet could have changed in the namespace: links
// with their configuration (not their carrier or timers, which move on their
// own), addresses other than link-local ones, and the ruleset.
func snapshot(t *testing.T) string {
	t.Helper()
	return linksSnapshot(t) + iptablesSave(t)
}

// linksSnapshot is the namespace's links and their addresses.
func linksSnapshot(t *testing.T) string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range links {
		a := l.Attrs()
		fmt.Fprintf(&b, "link %s type=%s mtu=%d master=%d alias=%q mac=%s up=%v\n", a.Name, l.Type(), a.MTU, a.MasterIndex, a.Alias, a.HardwareAddr, a.Flags&net.FlagUp != 0)
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			if !ad.IP.IsLinkLocalUnicast() {
				fmt.Fprintf(&b, "  addr %s\n", ad.IPNet)
			}
		}
	}
	return b.String()
}

var counters = regexp.MustCompile(` \[\d+:\d+\]`)

// iptablesSave returns both families' rulesets without comments and
// counters, so they can be compared and kept as golden files.
func iptablesSave(t *testing.T) string {
	t.Helper()
	var keep []string
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
		keep = append(keep, "# "+cmd)
		for _, l := range strings.Split(string(out), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				keep = append(keep, counters.ReplaceAllString(l, ""))
			}
		}
	}
	return strings.Join(keep, "\n") + "\n"
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func TestNetworkLifecycle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		docker bool // simulate dockerd's chains being present
	}{
		{"alone", false},
		{"beside-docker", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withDataplane(t, "", func(d *Dataplane) {
				ctx := context.Background()
				if tc.docker {
					for _, c := range []string{"DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2"} {
						run(t, "iptables", "-N", c)
					}
					run(t, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
					run(t, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
					run(t, "iptables", "-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1")
				}
				before := snapshot(t)
				n1 := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				n2 := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
				for _, n := range []model.Network{n1, n2, n1} { // the repeat must change nothing
					if err := d.EnsureNetwork(ctx, n); err != nil {
						t.Fatal(err)
					}
				}
				golden(t, "two-networks-"+tc.name, iptablesSave(t))

				br, err := netlink.LinkByName(n1.Bridge)
				if err != nil {
					t.Fatal(err)
				}
				if br.Type() != "bridge" || br.Attrs().MTU != 1450 || br.Attrs().Flags&net.FlagUp == 0 || br.Attrs().Alias != "mynet:mynet-test:net:"+nid1 {
					t.Fatalf("bridge %s: type %s mtu %d flags %v alias %q", n1.Bridge, br.Type(), br.Attrs().MTU, br.Attrs().Flags, br.Attrs().Alias)
				}
				// Set over rtnetlink, not /proc/sys, so a managed plugin can.
				if v, err := readSysctl("net/ipv4/conf/" + n1.Bridge + "/route_localnet"); err != nil || v != "1" {
					t.Fatalf("route_localnet = %q, %v; want 1", v, err)
				}
				addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
				if len(addrs) != 1 || addrs[0].IPNet.String() != "10.1.0.1/24" {
					t.Fatalf("bridge addresses = %v", addrs)
				}

				if err := d.DeleteNetwork(ctx, n2); err != nil {
					t.Fatal(err)
				}
				if strings.Contains(iptablesSave(t), nid2) {
					t.Fatal("rules of the deleted network remain")
				}
				for _, n := range []model.Network{n1, n1, n2} { // deletes are idempotent
					if err := d.DeleteNetwork(ctx, n); err != nil {
						t.Fatal(err)
					}
				}
				if after := snapshot(t); after != before {
					t.Fatalf("namespace changed after deleting all networks:\n--- before\n%s--- after\n%s", before, after)
				}
			})
		})
	}
}

func TestEndpointLifecycle(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		rules := iptablesSave(t)
		ep := testEndpoint(n, eid1)
		for range 2 {
			if err := d.EnsureEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
		}
		if got := iptablesSave(t); got != rules {
			t.Fatalf("an endpoint changed the ruleset (rules must not grow per endpoint):\n%s", got)
		}
		host, err := netlink.LinkByName(ep.HostVeth)
		if err != nil {
			t.Fatal(err)
		}
		br, _ := netlink.LinkByName(n.Bridge)
		if host.Attrs().MasterIndex != br.Attrs().Index || host.Attrs().Flags&net.FlagUp == 0 || host.Attrs().MTU != 1450 {
			t.Fatalf("host veth: master %d (bridge %d), flags %v, mtu %d", host.Attrs().MasterIndex, br.Attrs().Index, host.Attrs().Flags, host.Attrs().MTU)
		}
		peer, err := netlink.LinkByName(ep.ContainerVeth)
		if err != nil {
			t.Fatal(err)
		}
		if peer.Attrs().HardwareAddr.String() != ep.MAC.String() || peer.Attrs().MTU != 1450 {
			t.Fatalf("container veth: mac %s mtu %d", peer.Attrs().HardwareAddr, peer.Attrs().MTU)
		}
		if ok, err := d.EndpointExists(ep); !ok || err != nil {
			t.Fatalf("EndpointExists = %v, %v", ok, err)
		}
		if live, err := d.LiveEndpoints(); err != nil || len(live) != 1 || !live[ep.ID] {
			t.Fatalf("LiveEndpoints = %v, %v; want only %s", live, err, ep.ID)
		}
		for range 2 {
			if err := d.DeleteEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
		}
		d.Sync() // the veth goes after the answer
		if _, err := netlink.LinkByName(ep.ContainerVeth); err == nil {
			t.Fatal("container end survived DeleteEndpoint")
		}
		if ok, _ := d.EndpointExists(ep); ok {
			t.Fatal("EndpointExists after delete")
		}
		if live, _ := d.LiveEndpoints(); len(live) != 0 {
			t.Fatalf("LiveEndpoints after delete = %v", live)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}

// TestFailedCreateLeavesNothing injects a failure after each step of the
// creates and checks the namespace is exactly as before.
func TestFailedCreateLeavesNothing(t *testing.T) {
	for _, step := range []string{"bridge.network.bridge", "bridge.network.rules", "bridge.endpoint.veth"} {
		t.Run(step, func(t *testing.T) {
			withDataplane(t, step+"=error", func(d *Dataplane) {
				ctx := context.Background()
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				before := snapshot(t)
				err := d.EnsureNetwork(ctx, n)
				if step == "bridge.endpoint.veth" {
					// The network itself succeeds; the endpoint fails.
					if err != nil {
						t.Fatal(err)
					}
					before = snapshot(t)
					err = d.EnsureEndpoint(ctx, testEndpoint(n, eid1))
				}
				if err == nil || !strings.Contains(err.Error(), "injected failure") {
					t.Fatalf("got %v, want the injected failure", err)
				}
				if after := snapshot(t); after != before {
					t.Fatalf("failed create left changes:\n--- before\n%s--- after\n%s", before, after)
				}
			})
		})
	}
}

func TestConflicts(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n.Bridge = "foreign0"
		run(t, "ip", "link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1")
		before := snapshot(t)
		err := d.EnsureNetwork(ctx, n)
		if err == nil || !strings.Contains(err.Error(), "not mynet's bridge") {
			t.Fatalf("EnsureNetwork over a foreign link = %v", err)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if after := snapshot(t); after != before {
			t.Fatalf("conflict changed the namespace:\n--- before\n%s--- after\n%s", before, after)
		}
	})
}

func TestRemoveOrphans(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		keep := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		orphan := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
		ep := testEndpoint(keep, eid1)
		for _, n := range []model.Network{keep, orphan} {
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.EnsureEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		// A link of another instance must survive.
		// Its own netlink handle (in this thread's namespace), so that
		// closing it leaves d's open.
		other, err := New(Config{Instance: "someone-else", IPv4: d.fw4.(*iptablesFirewall).ipt})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		otherNet := testNetwork(strings.Repeat("d", 64), "10.3.0.0/24", "10.3.0.1/24")
		if err := other.EnsureNetwork(ctx, otherNet); err != nil {
			t.Fatal(err)
		}

		if err := d.RemoveOrphans(ctx, map[string]bool{nid1: true}, map[string]bool{}); err != nil {
			t.Fatal(err)
		}
		links, _ := netlink.LinkList()
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		for name, want := range map[string]bool{keep.Bridge: true, orphan.Bridge: false, ep.HostVeth: false, otherNet.Bridge: true} {
			if slices.Contains(names, name) != want {
				t.Errorf("link %s present=%v, want %v (links %v)", name, !want, want, names)
			}
		}
		rules := iptablesSave(t)
		if strings.Contains(rules, nid2) || !strings.Contains(rules, nid1) || !strings.Contains(rules, otherNet.ID) {
			t.Fatalf("rules after orphan removal:\n%s", rules)
		}
		if err := other.DeleteNetwork(ctx, otherNet); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteNetwork(ctx, keep); err != nil {
			t.Fatal(err)
		}
	})
}

func TestHostPrefixes(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		run(t, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
		run(t, "ip", "addr", "add", "10.9.8.7/16", "dev", "up0")
		run(t, "ip", "link", "set", "up0", "up")
		run(t, "ip", "route", "add", "10.50.0.0/24", "dev", "up0")
		run(t, "ip", "route", "add", "default", "via", "10.9.0.1")
		got, err := d.HostPrefixes(false)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"10.9.0.0/16", "10.50.0.0/24"} {
			if !slices.Contains(got, netip.MustParsePrefix(want)) {
				t.Errorf("HostPrefixes = %v, missing %s", got, want)
			}
		}
		for _, p := range got {
			if p.Bits() == 0 {
				t.Errorf("HostPrefixes includes the default route %s", p)
			}
		}
	})
}

// ruleOptionCase is an option combination of a network; both firewall
// backends keep a golden ruleset for each (TestRuleOptions,
// TestNFTRuleOptions).
type ruleOptionCase struct {
	name   string
	modify func(*model.Network)
}

func ruleOptionCases() []ruleOptionCase {
	v6 := []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}
	return []ruleOptionCase{
		{"icc-off", func(n *model.Network) { n.ICC = false }},
		{"masquerade-off", func(n *model.Network) { n.Masquerade = false }},
		{"internal", func(n *model.Network) { n.Internal = true }},
		{"ipv6", func(n *model.Network) { n.IPv6 = v6 }},
		{"nat-unprotected", func(n *model.Network) { n.Unprotected4 = true }},
		{"nat-unprotected-ipv6-only", func(n *model.Network) { n.IPv6, n.Unprotected6 = v6, true }},
		{"ipv6-only", func(n *model.Network) { n.IPv4, n.IPv6 = nil, v6 }},
		{"nat-unprotected-internal", func(n *model.Network) { n.Internal, n.Unprotected4 = true, true }},
		{"routed", func(n *model.Network) { n.Routed4 = true }},
		{"ipv4-nat-ipv6-routed", func(n *model.Network) { n.IPv6, n.Routed6 = v6, true }},
		{"trusted-interfaces", func(n *model.Network) { n.IPv6, n.Routed6, n.TrustedInterfaces = v6, true, []string{"eth3", "vx+"} }},
		{"isolated", func(n *model.Network) { n.IPv6, n.Internal, n.NoBridgeIPv4, n.NoBridgeIPv6 = v6, true, true, true }},
		{"inhibit-ipv4", func(n *model.Network) { n.IPv6, n.NoBridgeIPv4 = v6, true }},
	}
}

// TestRuleOptions keeps a golden ruleset for each option combination,
// checks that ensuring it again changes nothing and that deleting the
// network restores the baseline.
func TestRuleOptions(t *testing.T) {
	for _, tc := range ruleOptionCases() {
		t.Run(tc.name, func(t *testing.T) {
			withDataplane(t, "", func(d *Dataplane) {
				ctx := context.Background()
				before := snapshot(t)
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				tc.modify(&n)
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				rules := iptablesSave(t)
				golden(t, "options-"+tc.name, rules)
				// Each rule read back compares equal to the one built: a
				// second ensure finds nothing missing and adds nothing.
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				if again := iptablesSave(t); again != rules {
					t.Fatalf("a second ensure changed the rules:\n--- first\n%s--- second\n%s", rules, again)
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

func TestPorts(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		withNetwork := iptablesSave(t)
		ep := testEndpoint(n, eid1)
		c4, c6 := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")
		ports := []model.PortMapping{
			{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c4, Port: 80},
			{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c6, Port: 80},
			{Proto: "udp", HostIP: netip.MustParseAddr("10.9.9.9"), HostPort: 5353, HostPortEnd: 5353, ContainerIP: c4, Port: 53},
			{Proto: "tcp", HostPort: 9000, HostPortEnd: 9010, ContainerIP: c4, Port: 9000},
		}
		for range 2 {
			if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
				t.Fatal(err)
			}
		}
		golden(t, "ports", iptablesSave(t))
		if err := d.RemovePorts(ctx, ep, ports); err != nil {
			t.Fatal(err)
		}
		if got := iptablesSave(t); got != withNetwork {
			t.Fatalf("port rules remain:\n%s", got)
		}
		internal := n
		internal.Internal = true
		if err := d.EnsurePorts(ctx, internal, ep, ports); err == nil {
			t.Fatal("an internal network published ports")
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRuleCount: rules grow with networks and published ports, never with
// endpoints.
func TestRuleCount(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		base := countRules(t)
		for i := range 50 {
			ep := testEndpoint(n, fmt.Sprintf("%012x%052d", i+1, 0))
			if err := d.EnsureEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
			if i < 20 {
				m := model.PortMapping{Proto: "tcp", HostPort: uint16(10000 + i), HostPortEnd: uint16(10000 + i), ContainerIP: netip.AddrFrom4([4]byte{10, 1, 0, byte(2 + i)}), Port: 80}
				if err := d.EnsurePorts(ctx, n, ep, []model.PortMapping{m}); err != nil {
					t.Fatal(err)
				}
			}
		}
		got := countRules(t)
		t.Logf("rules: %d with the network, %d with 50 endpoints and 20 published ports", base, got)
		if got != base+2*20 {
			t.Fatalf("got %d rules, want %d (2 per published port, none per endpoint)", got, base+2*20)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if countRules(t) != 0 {
			t.Fatalf("rules remain after deleting the network:\n%s", iptablesSave(t))
		}
	})
}

func countRules(t *testing.T) int {
	n := 0
	for _, l := range strings.Split(iptablesSave(t), "\n") {
		if strings.HasPrefix(l, "-A ") {
			n++
		}
	}
	return n
}

// TestFingerprint: stable while nothing changes, different after each kind
// of damage from outside that EnsureNetwork and EnsureEndpoint repair, and
// the same again once they have.
func TestFingerprint(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		fp := func() string {
			s, err := d.Fingerprint()
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(s) // fmt sorts map keys
		}
		ep := testEndpoint(n, eid1)
		if err := d.EnsureEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		good := fp()
		if fp() != good {
			t.Fatal("fingerprint changes with nothing changing")
		}
		for _, damage := range [][]string{
			{"iptables", "-F", d.fw4.(*iptablesFirewall).chains.Isolation},
			{"iptables", "-t", "nat", "-F", d.fw4.(*iptablesFirewall).chains.Postrouting},
			{"iptables", "-D", "FORWARD", "-m", "comment", "--comment", "mynet mynet-test", "-j", d.fw4.(*iptablesFirewall).chains.Forward},
			{"ip", "addr", "flush", "dev", n.Bridge},
			{"ip", "link", "set", ep.HostVeth, "nomaster"},
			{"ip", "link", "set", ep.HostVeth, "down"},
			{"sysctl", "-qw", "net.ipv4.conf." + n.Bridge + ".route_localnet=0"},
			{"sysctl", "-qw", "net.ipv4.ip_forward=0"},
			{"ip", "link", "del", n.Bridge},
		} {
			run(t, damage...)
			if fp() == good {
				t.Fatalf("fingerprint unchanged after %v", damage)
			}
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
			if err := d.EnsureEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
			if got := fp(); got != good && !strings.Contains(strings.Join(damage, " "), "link del") {
				t.Fatalf("fingerprint after repairing %v differs", damage)
			}
			good = fp()
		}
		// Docker started after mynet: the hook moves into DOCKER-USER.
		run(t, "iptables", "-N", "DOCKER-USER")
		if fp() == good {
			t.Fatal("fingerprint unchanged after Docker's chains appeared")
		}
		if err := d.DeleteEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		run(t, "iptables", "-X", "DOCKER-USER")
	})
}

// TestAnnounceNewAddress: a neighbour that still maps an address to its
// previous owner's MAC learns the new endpoint's MAC when it is created.
func TestAnnounceNewAddress(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		// The neighbour: a veth on the bridge whose other end holds a stale
		// entry for 10.1.0.9 with the old MAC.
		run(t, "ip", "link", "add", "nb0", "type", "veth", "peer", "name", "nb1")
		run(t, "ip", "link", "set", "nb0", "master", n.Bridge, "up")
		run(t, "ip", "addr", "add", "10.1.0.50/24", "dev", "nb1")
		run(t, "ip", "link", "set", "nb1", "up")
		run(t, "ip", "neigh", "replace", "10.1.0.9", "lladdr", "02:00:00:00:00:99", "dev", "nb1", "nud", "stale")
		ep := testEndpoint(n, eid1)
		ep.Addresses = []netip.Addr{netip.MustParseAddr("10.1.0.9")}
		if err := d.EnsureEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		var got string
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			out, _ := exec.Command("ip", "neigh", "show", "10.1.0.9", "dev", "nb1").CombinedOutput()
			if got = string(out); strings.Contains(got, ep.MAC.String()) {
				break
			}
		}
		if !strings.Contains(got, ep.MAC.String()) {
			t.Fatalf("neighbour entry after the new endpoint: %q, want MAC %s", got, ep.MAC)
		}
		run(t, "ip", "link", "del", "nb0")
		if err := d.DeleteEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}

// TestVethDeletionBatches: veths of deleted endpoints go in one batch (see
// reap.go) and all of them go; a link that took an endpoint's name but is
// not mynet's stays, and nothing is left in the instance's link group.
func TestVethDeletionBatches(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		var eps []model.Endpoint
		for i := range 20 {
			ep := testEndpoint(n, fmt.Sprintf("%012x%052d", i+1, 0))
			if err := d.EnsureEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
			eps = append(eps, ep)
		}
		// Someone replaces the last veth with a link of their own.
		foreign := eps[19]
		run(t, "ip", "link", "del", foreign.HostVeth)
		run(t, "ip", "link", "add", foreign.HostVeth, "type", "bridge")
		for _, ep := range eps {
			if err := d.DeleteEndpoint(ctx, ep); err != nil {
				t.Fatal(err)
			}
		}
		d.Sync()
		links, err := netlink.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, l := range links {
			if uint32(l.Attrs().Group) == d.reaper.group {
				t.Errorf("link %s left in mynet's link group", l.Attrs().Name)
			}
			if strings.HasPrefix(l.Attrs().Name, "mnv") || strings.HasPrefix(l.Attrs().Name, "mnc") {
				left = append(left, l.Attrs().Name)
			}
		}
		if !slices.Equal(left, []string{foreign.HostVeth}) {
			t.Fatalf("links left: %v, want only the foreign %s", left, foreign.HostVeth)
		}
		run(t, "ip", "link", "del", foreign.HostVeth)
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}

// failingIPT fails a restore whose table selected by fail holds a line
// that fail selects, as iptables does now and then (say, right after a
// firewall reload, or with the xtables lock held past its timeout): the
// tables before it are committed, as iptables-restore commits each table
// at its COMMIT.
type failingIPT struct {
	IPTables
	fail func(line string) bool
}

var errInjectedIPT = errors.New("injected iptables failure")

func (f *failingIPT) Restore(input string) error {
	tables := strings.SplitAfter(input, "COMMIT\n")
	for i, table := range tables {
		if slices.ContainsFunc(strings.Split(table, "\n"), f.fail) {
			if before := strings.Join(tables[:i], ""); before != "" {
				if err := f.IPTables.Restore(before); err != nil {
					return err
				}
			}
			return errInjectedIPT
		}
	}
	return f.IPTables.Restore(input)
}

// TestFailedRepairKeepsWhatWorked: a repair (an ensure of a network or of
// ports that exist, with rules in two tables and the gateway deleted from
// outside) whose transaction fails in its second table returns the error
// and leaves the kernel as it found it: it removes what the committed
// first table added, and never the rules and chains that were there
// before the call.
func TestFailedRepairKeepsWhatWorked(t *testing.T) {
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	ep := testEndpoint(n, eid1)
	c4 := netip.MustParseAddr("10.1.0.2")
	ports := []model.PortMapping{
		{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c4, Port: 80},
		{Proto: "udp", HostPort: 5353, HostPortEnd: 5353, ContainerIP: c4, Port: 53},
	}
	chains := model.ChainsFor("mynet-test")
	epComment := "mynet net=" + nid1 + " ep=" + eid1
	for _, tc := range []struct {
		name   string
		damage [][]string
		fail   func(line string) bool
		repair func(ctx context.Context, d *Dataplane) error
	}{
		{
			name: "network",
			damage: [][]string{
				{"iptables", "-D", chains.Isolation, "!", "-i", n.Bridge, "-o", n.Bridge, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-m", "comment", "--comment", "mynet net=" + nid1, "-j", "DROP"},
				{"iptables", "-t", "nat", "-D", chains.Postrouting, "-s", "10.1.0.0/24", "!", "-o", n.Bridge, "-m", "comment", "--comment", "mynet net=" + nid1, "-j", "MASQUERADE"},
				{"ip", "addr", "del", "10.1.0.1/24", "dev", n.Bridge},
			},
			// The nat table comes after the filter table's drop.
			fail: func(line string) bool { return strings.Contains(line, "MASQUERADE") },
			repair: func(ctx context.Context, d *Dataplane) error {
				return d.EnsureNetwork(ctx, n)
			},
		},
		{
			name: "ports",
			damage: [][]string{
				{"iptables", "-t", "nat", "-D", chains.DNAT, "-p", "tcp", "-m", "tcp", "--dport", "8080", "-m", "comment", "--comment", epComment, "-j", "DNAT", "--to-destination", "10.1.0.2:80"},
				{"iptables", "-D", chains.Isolation, "-d", "10.1.0.2/32", "-o", n.Bridge, "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "conntrack", "--ctstate", "DNAT", "-m", "comment", "--comment", epComment, "-j", "ACCEPT"},
			},
			// The nat table's DNAT comes after the filter table's accept.
			fail: func(line string) bool { return strings.Contains(line, "--to-destination") },
			repair: func(ctx context.Context, d *Dataplane) error {
				return d.EnsurePorts(ctx, n, ep, ports)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withDataplane(t, "", func(d *Dataplane) {
				ctx := context.Background()
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				if err := d.EnsureEndpoint(ctx, ep); err != nil {
					t.Fatal(err)
				}
				if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
					t.Fatal(err)
				}
				good := snapshot(t)
				for _, cmd := range tc.damage {
					run(t, cmd...)
				}
				damaged := snapshot(t)
				if damaged == good {
					t.Fatal("the damage changed nothing: the test would prove nothing")
				}
				real := d.fw4.(*iptablesFirewall).ipt
				d.fw4.(*iptablesFirewall).ipt = &failingIPT{IPTables: real, fail: tc.fail}
				err := tc.repair(ctx, d)
				d.fw4.(*iptablesFirewall).ipt = real
				if !errors.Is(err, errInjectedIPT) {
					t.Fatalf("repair returned %v, want the injected failure", err)
				}
				if after := snapshot(t); after != damaged {
					t.Fatalf("the failed repair changed what it found:\n--- found\n%s--- left\n%s", damaged, after)
				}
				// Once iptables works again, the repair completes (a rule
				// added again is appended, so only the order may differ).
				if err := tc.repair(ctx, d); err != nil {
					t.Fatal(err)
				}
				if after := snapshot(t); sortedLines(after) != sortedLines(good) {
					t.Fatalf("repair incomplete:\n--- want\n%s--- got\n%s", good, after)
				}
				if err := d.DeleteEndpoint(ctx, ep); err != nil {
					t.Fatal(err)
				}
				if err := d.DeleteNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

func sortedLines(s string) string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
