package bridge

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
)

// requireNFTIPTables skips unless iptables is iptables-nft, whose changes
// the ruleset generation shows.
func requireNFTIPTables(t *testing.T, d *Dataplane) *iptablesFirewall {
	t.Helper()
	f := d.fw4.(*iptablesFirewall)
	if f.gen == nil {
		t.Skip("iptables is not iptables-nft here: no ruleset generation, nothing is cached")
	}
	return f
}

// TestRestoreGenerations measures what iptables_cache.go relies on: one
// iptables-nft-restore --noflush moves the ruleset generation by one per
// table it writes (iptables-nft commits at each COMMIT), so that a write
// whose generation moved by exactly that many saw no one else's commit.
func TestRestoreGenerations(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		f := requireNFTIPTables(t, d)
		for _, tables := range [][]string{{"filter"}, {"filter", "nat"}, {"filter", "nat", "mangle"}} {
			var add, del tx
			for _, table := range tables {
				add.line(table, "-N GENTEST")
				add.line(table, "-A GENTEST -j RETURN")
				del.line(table, "-F GENTEST")
				del.line(table, "-X GENTEST")
			}
			for _, tr := range []*tx{&add, &del} {
				before, _ := d.gen.current()
				if err := f.ipt.Restore(tr.render()); err != nil {
					t.Fatal(err)
				}
				if after, _ := d.gen.current(); after-before != uint32(len(tables)) {
					t.Errorf("a restore of %d tables moved the generation by %d", len(tables), after-before)
				}
			}
		}
	})
}

// TestRulesetCacheMatchesKernel: after each kind of write, the cache that
// the firewall kept up to date instead of reading again is what
// iptables-save shows; and back-to-back publishes read the ruleset
// once, not once each.
func TestRulesetCacheMatchesKernel(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		f := requireNFTIPTables(t, d)
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		n2 := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
		ep := testEndpoint(n, eid1)
		ports := func(first, count int) []model.PortMapping {
			var out []model.PortMapping
			for i := range count {
				hp := uint16(first + i)
				out = append(out, model.PortMapping{Proto: "tcp", HostPort: hp, HostPortEnd: hp, ContainerIP: netip.MustParseAddr("10.1.0.2"), Port: 80})
			}
			return out
		}
		check := func(step string) {
			t.Helper()
			if f.cache == nil {
				t.Fatalf("%s: no cache kept", step)
			}
			out, err := f.ipt.Save()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := dumpRuleset(f.cache.rs), dumpRuleset(parseSave(out)); got != want {
				t.Fatalf("%s: cached ruleset differs from iptables-save:\n--- cached\n%s--- kernel\n%s", step, got, want)
			}
		}
		steps := []struct {
			name string
			do   func() error
		}{
			{"first network", func() error { return d.EnsureNetwork(ctx, n) }},
			{"second network", func() error { return d.EnsureNetwork(ctx, n2) }},
			{"publish", func() error { return d.EnsurePorts(ctx, n, ep, ports(20000, 10)) }},
			{"publish more", func() error { return d.EnsurePorts(ctx, n, ep, ports(20000, 500)) }},
			{"unpublish", func() error { return d.RemovePorts(ctx, ep, ports(20000, 500)) }},
			{"Docker's chain appears", func() error {
				run(t, "iptables", "-N", "DOCKER-USER")
				return d.EnsureNetwork(ctx, n) // moves the hook
			}},
			{"second network removed", func() error { return d.DeleteNetwork(ctx, n2) }},
			{"last network removed", func() error { return d.DeleteNetwork(ctx, n) }},
		}
		for _, s := range steps {
			if err := s.do(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			check(s.name)
		}
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		reads := f.reads
		for i := range 5 {
			if err := d.EnsurePorts(ctx, n, ep, ports(21000+10*i, 10)); err != nil {
				t.Fatal(err)
			}
		}
		if f.reads != reads {
			t.Errorf("5 publishes ran iptables-save %d times, want 0", f.reads-reads)
		}
		check("back-to-back publishes")
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		run(t, "iptables", "-X", "DOCKER-USER")
	})
}

// dumpRuleset prints the chains of a ruleset in a stable order.
func dumpRuleset(rs ruleset) string {
	var b strings.Builder
	for _, table := range slices.Sorted(maps.Keys(rs)) {
		for _, chain := range slices.Sorted(maps.Keys(rs[table].chains)) {
			fmt.Fprintf(&b, "%s :%s\n", table, chain)
			for _, spec := range rs[table].chains[chain] {
				fmt.Fprintf(&b, "%s -A %s %s\n", table, chain, spec)
			}
		}
	}
	return b.String()
}

// TestFailedRestoreDropsCache: a write that fails drops the cache (the
// tables before the failing one are committed), and what the revert then
// reads and writes is the kernel's ruleset again.
func TestFailedRestoreDropsCache(t *testing.T) {
	withDataplane(t, "", func(d *Dataplane) {
		f := requireNFTIPTables(t, d)
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		if f.cache == nil {
			t.Fatal("no cache after a write")
		}
		f.ipt = nftFailingIPT{&failingIPT{IPTables: f.ipt, fail: func(l string) bool { return strings.Contains(l, "MASQUERADE") }}}
		// Damage in two tables: the repair's filter table commits, its
		// nat table fails, and the revert removes what the filter got.
		run(t, "iptables", "-F", f.chains.Isolation)
		run(t, "iptables", "-t", "nat", "-F", f.chains.Postrouting)
		if err := d.EnsureNetwork(ctx, n); err == nil {
			t.Fatal("the injected failure did not fail the ensure")
		}
		if f.cache == nil {
			t.Fatal("the revert after the failure kept no cache")
		}
		out, err := f.ipt.Save()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := dumpRuleset(f.cache.rs), dumpRuleset(parseSave(out)); got != want {
			t.Fatalf("after a failed write the cache is not the kernel's ruleset:\n--- cached\n%s--- kernel\n%s", got, want)
		}
		if strings.Contains(out, "MASQUERADE") || strings.Contains(out, "-A "+f.chains.Isolation+" ") {
			t.Fatal("the failed repair left rules behind")
		}
		if err := d.DeleteNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
	})
}

// nftFailingIPT is a failingIPT that keeps the cache on.
type nftFailingIPT struct{ *failingIPT }

func (nftFailingIPT) nfTables() bool { return true }

// TestQuietFingerprintSeesDamage: a fingerprint with nothing changed reads
// nothing (no link dump, no iptables-save, no table read), and one taken
// right after damage from outside sees it although the previous ones came
// from the caches: the generation and the link events must invalidate
// them. For both firewall backends.
func TestQuietFingerprintSeesDamage(t *testing.T) {
	type damage struct {
		what string
		cmd  func(d *Dataplane, n model.Network, ep model.Endpoint) []string
	}
	common := []damage{
		{"address removed", func(_ *Dataplane, n model.Network, _ model.Endpoint) []string {
			return []string{"ip", "addr", "del", "10.1.0.1/24", "dev", n.Bridge}
		}},
		{"veth down", func(_ *Dataplane, _ model.Network, ep model.Endpoint) []string {
			return []string{"ip", "link", "set", ep.HostVeth, "down"}
		}},
		{"sysctl flipped", func(_ *Dataplane, n model.Network, _ model.Endpoint) []string {
			return []string{"sysctl", "-qw", "net.ipv4.conf." + n.Bridge + ".route_localnet=0"}
		}},
		{"anti-spoofing rule deleted", func(d *Dataplane, _ model.Network, _ model.Endpoint) []string {
			return []string{"sh", "-c", fmt.Sprintf("nft delete rule bridge %[1]s %[2]s handle $(nft -a list chain bridge %[1]s %[2]s | awk '/handle/ {h=$NF} END {print h}')", model.SpoofTableName(d.instance), spoofBaseChain)}
		}},
		{"link deleted", func(_ *Dataplane, _ model.Network, ep model.Endpoint) []string {
			return []string{"ip", "link", "del", ep.HostVeth}
		}},
	}
	ipt := []damage{
		{"rule deleted", func(d *Dataplane, _ model.Network, _ model.Endpoint) []string {
			c := d.fw4.(*iptablesFirewall).chains
			return []string{"iptables", "-D", "FORWARD", "-m", "comment", "--comment", model.HookComment(d.instance), "-j", c.Forward}
		}},
		{"chain flushed", func(d *Dataplane, _ model.Network, _ model.Endpoint) []string {
			return []string{"iptables", "-F", d.fw4.(*iptablesFirewall).chains.Isolation}
		}},
	}
	nft := []damage{
		{"table flushed", func(d *Dataplane, _ model.Network, _ model.Endpoint) []string {
			return []string{"nft", "flush", "table", "ip", model.NFTTableName(d.instance)}
		}},
	}
	for _, tc := range []struct {
		fw      string
		damages []damage
	}{{model.FirewallIPTables, append(ipt, common...)}, {model.FirewallNFTables, append(nft, common...)}} {
		t.Run(tc.fw, func(t *testing.T) {
			// t.Run's goroutine is in the host namespace: withBackend
			// enters a namespace of its own on this one.
			withBackend(t, tc.fw, func(d *Dataplane) {
				nstest.RequireCommand(t, "nft")
				for _, dm := range tc.damages {
					quietThenDamage(t, d, dm.what, dm.cmd)
				}
			})
		})
	}
}

// quietThenDamage builds a network and an endpoint under anti-spoofing
// with a published port, checks that repeated fingerprints read nothing,
// applies the damage and checks that the next fingerprint differs; then
// removes everything.
func quietThenDamage(t *testing.T, d *Dataplane, what string, cmd func(*Dataplane, model.Network, model.Endpoint) []string) {
	t.Helper()
	ctx := context.Background()
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	ep := testEndpoint(n, eid1)
	ep.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 7}
	ep.Addresses = []netip.Addr{netip.MustParseAddr("10.1.0.2")}
	ep.AntiSpoofing = true
	ports := []model.PortMapping{{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: ep.Addresses[0], Port: 80}}
	if err := d.EnsureNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := d.EnsureEndpoint(ctx, ep); err != nil {
		t.Fatal(err)
	}
	if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
		t.Fatal(err)
	}
	fp := func() string {
		t.Helper()
		d.Sync()
		f, err := d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		s, err := d.SpoofFingerprint()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(f, s)
	}
	good := fp()
	// Late kernel events of the setup (IPv6 address states) may cost one
	// more read; after that, none.
	_ = fp()
	reads := d.reads()
	for range 3 {
		if fp() != good {
			t.Fatalf("%s: fingerprint changes with nothing changing", what)
		}
	}
	if got := d.reads() - reads; got != 0 {
		t.Errorf("%s: 3 fingerprints with nothing changed read %d times, want 0", what, got)
	}
	run(t, cmd(d, n, ep)...)
	if fp() == good {
		t.Errorf("fingerprint unchanged after %s (%v)", what, cmd(d, n, ep))
	}
	if err := d.DeleteEndpoint(ctx, ep); err != nil {
		t.Fatal(err)
	}
	if err := d.RemovePorts(ctx, ep, ports); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	d.Sync()
}

// TestLinkWatchStops: closing the Dataplane's link watch ends its
// receiver goroutine (counted, so that another test's leak does not
// count here).
func TestLinkWatchStops(t *testing.T) {
	receivers := func() int {
		buf := make([]byte, 1<<22)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*linkWatch).receive(")
	}
	withDataplane(t, "", func(d *Dataplane) {
		if d.links.conn == nil {
			t.Fatal("no link subscription in the test namespace")
		}
		before := receivers()
		d.links.close()
		if after := receivers(); after != before-1 {
			t.Fatalf("%d link watch receivers before the close, %d after; want one less", before, after)
		}
		d.links.close() // as d.Close does again: a no-op
	})
}

// TestSysctlFiles: a kept sysctl file follows writes, and a link deleted
// and created again under its name is read afresh (the old file fails
// with ENOENT for good); a sweep closes the files not read since.
func TestSysctlFiles(t *testing.T) {
	nstest.Run(t, func() {
		var s sysctlFiles
		defer s.close()
		key := "net/ipv4/conf/mn-sysctltest/route_localnet"
		run(t, "ip", "link", "add", "mn-sysctltest", "type", "bridge")
		for _, step := range []struct {
			cmd  []string
			want string
		}{
			{nil, "0"},
			{[]string{"sysctl", "-qw", "net.ipv4.conf.mn-sysctltest.route_localnet=1"}, "1"},
			{[]string{"sh", "-c", "ip link del mn-sysctltest && ip link add mn-sysctltest type bridge"}, "0"},
			{[]string{"ip", "link", "del", "mn-sysctltest"}, "-"},
			{[]string{"sh", "-c", "ip link add mn-sysctltest type bridge && sysctl -qw net.ipv4.conf.mn-sysctltest.route_localnet=1"}, "1"},
		} {
			if step.cmd != nil {
				run(t, step.cmd...)
			}
			if got := s.value(key); got != step.want {
				t.Fatalf("after %v: %s = %q, want %q", step.cmd, key, got, step.want)
			}
			s.sweep()
		}
		if len(s.fds) != 1 {
			t.Fatalf("%d files open, want 1", len(s.fds))
		}
		s.sweep()
		s.sweep()
		if len(s.fds) != 0 {
			t.Fatalf("%d files open after a sweep with nothing read, want 0", len(s.fds))
		}
		run(t, "ip", "link", "del", "mn-sysctltest")
	})
}
