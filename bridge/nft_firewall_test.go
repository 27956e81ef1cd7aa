package bridge

import (
	"context"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
)

// withNFTDataplane runs fn in a fresh network namespace with a Dataplane
// on the nftables firewall backend.
func withNFTDataplane(t testing.TB, fn func(d *Dataplane)) {
	nstest.RequireCommand(t, "nft")
	nstest.Run(t, func() {
		nl, err := netlink.NewHandle()
		if err != nil {
			t.Fatal(err)
		}
		d, err := New(Config{Instance: "mynet-test", Netlink: nl, Firewall: model.FirewallNFTables})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		fn(d)
	})
}

var nftHandles = regexp.MustCompile(` # handle \d+| packets \d+ bytes \d+`)

// nftList lists a table as nft prints it, without handles and counters.
func nftList(t *testing.T, family, table string) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "table", family, table).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file") {
			return ""
		}
		t.Fatalf("nft list table %s %s: %v: %s", family, table, err, out)
	}
	return nftHandles.ReplaceAllString(string(out), "")
}

// nftRuleset is the whole ruleset, for before/after comparisons.
func nftRuleset(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return nftHandles.ReplaceAllString(string(out), "")
}

// nftTestNetworks are the networks of the golden files.
func nftTestNetworks() map[string]model.Network {
	plain := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	dual := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
	dual.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:2::/64"), Gateway: netip.MustParsePrefix("fd00:2::1/64")}}
	dual.ICC, dual.Masquerade = false, false
	internal := testNetwork(nid1, "10.3.0.0/24", "10.3.0.1/24")
	internal.Internal = true
	unprotected := testNetwork(nid1, "10.4.0.0/24", "10.4.0.1/24")
	unprotected.Unprotected4 = true
	return map[string]model.Network{"plain": plain, "dual-noicc-nomasq": dual, "internal": internal, "nat-unprotected": unprotected}
}

func nftTestPorts(n model.Network) (model.Endpoint, []model.PortMapping) {
	ep := testEndpoint(n, eid1)
	ctr := netip.MustParseAddr("10.1.0.2")
	return ep, []model.PortMapping{
		{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: ctr, Port: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("198.18.0.1"), HostPort: 5353, HostPortEnd: 5355, ContainerIP: ctr, Port: 53},
		{Proto: "sctp", HostIP: netip.MustParseAddr("fd00:9::1"), HostPort: 9000, HostPortEnd: 9000, ContainerIP: netip.MustParseAddr("fd00:1::2"), Port: 90},
	}
}

// TestNFTRulesGolden renders, without root, the batches the nftables
// backend sends for networks and for published ports.
func TestNFTRulesGolden(t *testing.T) {
	for name, n := range nftTestNetworks() {
		for _, v6 := range []bool{false, true} {
			o := nftObjsFor("mynet", v6)
			chains, elems := o.networkObjects(n)
			if len(chains) == 0 {
				continue
			}
			b := newNFTBatch(nil, o)
			b.base()
			for _, ch := range chains {
				b.chain(&nftables.Chain{Name: ch.name, Table: o.table}, ch.rules)
			}
			b.elems(true, elems)
			golden(t, "nft/network-"+name+"-"+o.ipName(), strings.Join(b.lines, "\n")+"\n")
		}
	}
	n := nftTestNetworks()["plain"]
	for _, v6 := range []bool{false, true} {
		o := nftObjsFor("mynet", v6)
		ep, ports := nftTestPorts(n)
		b := newNFTBatch(nil, o)
		b.elems(true, o.portElems(ep, ports))
		golden(t, "nft/ports-"+o.ipName(), strings.Join(b.lines, "\n")+"\n")
	}
}

// TestNFTKernelGolden writes the same networks and ports into the kernel
// and keeps nft's own listing of the tables: the expressions, not only
// the text the builders attach to them.
func TestNFTKernelGolden(t *testing.T) {
	withNFTDataplane(t, func(d *Dataplane) {
		ctx := context.Background()
		n := nftTestNetworks()["dual-noicc-nomasq"]
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		p := nftTestNetworks()["plain"]
		if err := d.EnsureNetwork(ctx, p); err != nil {
			t.Fatal(err)
		}
		ep, ports := nftTestPorts(p)
		if err := d.EnsurePorts(ctx, p, ep, ports); err != nil {
			t.Fatal(err)
		}
		table := model.NFTTableName("mynet-test")
		golden(t, "nft/kernel-ip", nftList(t, "ip", table))
		golden(t, "nft/kernel-ip6", nftList(t, "ip6", table))
	})
}

// TestNFTFingerprintAndOrphans checks what the reconcile relies on: the
// fingerprint keys each network's and endpoint's objects by their names
// and comments, so an outside change shows in that network's digest only,
// and orphan removal finds networks and endpoints by the same.
func TestNFTFingerprintAndOrphans(t *testing.T) {
	withNFTDataplane(t, func(d *Dataplane) {
		ctx := context.Background()
		n1, n2 := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24"), testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
		for _, n := range []model.Network{n1, n2} {
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		ep, ports := nftTestPorts(n1)
		if err := d.EnsurePorts(ctx, n1, ep, ports); err != nil {
			t.Fatal(err)
		}
		if has, err := d.HasRules(); err != nil || !has {
			t.Fatalf("HasRules = %v, %v; want true", has, err)
		}
		before, err := d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"net:" + nid1, "net:" + nid2, "ep:" + eid1} {
			if before[k] == "" {
				t.Errorf("fingerprint has no %s: %v", k, before)
			}
		}
		table := model.NFTTableName("mynet-test")
		run(t, "nft", "flush", "chain", "ip", table, model.NFTNetworkChain(nid1, model.NFTChainIn))
		after, err := d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		for k := range before {
			if changed := after[k] != before[k]; changed != (k == "net:"+nid1) {
				t.Errorf("after flushing network 1's ingress chain, %s changed=%v", k, changed)
			}
		}
		if err := d.EnsureNetwork(ctx, n1); err != nil {
			t.Fatal(err)
		}
		if repaired, _ := d.Fingerprint(); repaired["net:"+nid1] != before["net:"+nid1] {
			t.Errorf("EnsureNetwork did not restore network 1's chain")
		}

		if err := d.RemoveOrphans(ctx, map[string]bool{nid2: true}, map[string]bool{}); err != nil {
			t.Fatal(err)
		}
		if got := nftList(t, "ip", table); strings.Contains(got, nid1) || strings.Contains(got, eid1) || !strings.Contains(got, nid2) {
			t.Fatalf("after removing network 1 and its endpoint as orphans:\n%s", got)
		}
		if got := nftList(t, "ip6", table); got != "" {
			t.Fatalf("the ip6 table, which held only network 1's endpoint's port, is left:\n%s", got)
		}
		if err := d.RemoveOrphans(ctx, map[string]bool{}, map[string]bool{}); err != nil {
			t.Fatal(err)
		}
		if got := nftRuleset(t); got != "" {
			t.Fatalf("ruleset left after removing every network:\n%s", got)
		}
	})
}

// TestNFTPortScale publishes 10,000 host ports of one endpoint (a range,
// as docker run -p A-B:C-D sends it) in one batch and unpublishes them,
// and logs the time each took (issue 13's target: 2 s each).
func TestNFTPortScale(t *testing.T) {
	withNFTDataplane(t, func(d *Dataplane) {
		ctx := context.Background()
		n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
		if err := d.EnsureNetwork(ctx, n); err != nil {
			t.Fatal(err)
		}
		ep := testEndpoint(n, eid1)
		ports := []model.PortMapping{{Proto: "tcp", HostPort: 20000, HostPortEnd: 29999, ContainerIP: netip.MustParseAddr("10.1.0.2"), Port: 30000}}
		start := time.Now()
		if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
			t.Fatal(err)
		}
		published := time.Since(start)
		fw := d.fw4.(*nftFirewall)
		st, err := fw.read(fw.objs(), []string{nsPortsAny, nsPublished})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.elems[nsPortsAny]) != 10000 || len(st.elems[nsPublished]) != 10000 {
			t.Fatalf("%d port elements and %d published, want 10000 each", len(st.elems[nsPortsAny]), len(st.elems[nsPublished]))
		}
		start = time.Now()
		if err := d.EnsurePorts(ctx, n, ep, ports); err != nil {
			t.Fatal(err)
		}
		again := time.Since(start)
		start = time.Now()
		if err := d.RemovePorts(ctx, ep, ports); err != nil {
			t.Fatal(err)
		}
		unpublished := time.Since(start)
		if st, err = fw.read(fw.objs(), []string{nsPortsAny, nsPublished}); err != nil || len(st.elems[nsPortsAny])+len(st.elems[nsPublished]) != 0 {
			t.Fatalf("after RemovePorts: %d elements left, %v", len(st.elems[nsPortsAny])+len(st.elems[nsPublished]), err)
		}
		t.Logf("10,000 ports: publish %v, publish again (nothing to do) %v, unpublish %v", published, again, unpublished)
	})
}

// TestNFTRuleOptions keeps, for each option combination of
// TestRuleOptions (the iptables backend's goldens), nft's listing of both
// families' tables: a family the network lacks has no table. Ensuring the
// network again and the reconcile's check change nothing, and deleting
// the network restores the baseline.
func TestNFTRuleOptions(t *testing.T) {
	for _, tc := range ruleOptionCases() {
		t.Run(tc.name, func(t *testing.T) {
			withNFTDataplane(t, func(d *Dataplane) {
				ctx := context.Background()
				before := linksSnapshot(t) + nftRuleset(t)
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				tc.modify(&n)
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				table := model.NFTTableName("mynet-test")
				rules := "# ip\n" + nftList(t, "ip", table) + "# ip6\n" + nftList(t, "ip6", table)
				golden(t, "nft/options-"+tc.name, rules)
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				if repaired, err := d.EnsureRules(ctx, []model.Network{n}, nil); err != nil || len(repaired) != 0 {
					t.Errorf("EnsureRules after EnsureNetwork = %v, %v; want nothing to repair", repaired, err)
				}
				if again := "# ip\n" + nftList(t, "ip", table) + "# ip6\n" + nftList(t, "ip6", table); again != rules {
					t.Fatalf("a second ensure changed the rules:\n--- first\n%s--- second\n%s", rules, again)
				}
				if err := d.DeleteNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
				if after := linksSnapshot(t) + nftRuleset(t); after != before {
					t.Fatalf("namespace changed:\n--- before\n%s--- after\n%s", before, after)
				}
			})
		})
	}
}
