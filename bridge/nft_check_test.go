package bridge

import (
	"context"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// TestNFTGaps: what NFTGaps names after each kind of damage, and nothing
// on a table as built. It only reads: the damage is still there after.
func TestNFTGaps(t *testing.T) {
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
		ep.Ports = ports
		nets, eps := []model.Network{n1, n2}, []model.Endpoint{ep}
		gaps := func() []NFTGap {
			t.Helper()
			g, err := NFTGaps("mynet-test", false, nets, eps)
			if err != nil {
				t.Fatal(err)
			}
			return g
		}
		if g := gaps(); len(g) != 0 {
			t.Fatalf("gaps in a table as built: %+v", g)
		}
		table := model.NFTTableName("mynet-test")
		steps := []struct {
			name, want, network string
			damage              []string
		}{
			{"a network's chain flushed", "chain " + model.NFTNetworkChain(nid2, model.NFTChainIn) + " does not hold", nid2,
				[]string{"nft", "flush", "chain", "ip", table, model.NFTNetworkChain(nid2, model.NFTChainIn)}},
			{"a published port deleted", "element 10.1.0.2 . tcp . 80 of set " + nsPublished, nid1,
				[]string{"nft", "delete", "element", "ip", table, nsPublished, "{ 10.1.0.2 . tcp . 80 }"}},
			{"a shared chain flushed", "chain " + nftChainOrder[0] + " does not hold", "",
				[]string{"nft", "flush", "chain", "ip", table, nftChainOrder[0]}},
		}
		for _, s := range steps {
			before := nftList(t, "ip", table)
			run(t, s.damage...)
			if nftList(t, "ip", table) == before {
				t.Fatalf("%s: the damage changed nothing", s.name)
			}
			var found *NFTGap
			for _, g := range gaps() {
				if strings.Contains(g.What, s.want) {
					found = &g
				}
			}
			if found == nil || found.Network != s.network {
				t.Errorf("%s: gaps %+v; want one naming %q for network %s", s.name, gaps(), s.want, s.network)
			}
			if _, err := d.EnsureRules(ctx, nets, eps); err != nil {
				t.Fatal(err)
			}
			if g := gaps(); len(g) != 0 {
				t.Fatalf("%s: gaps after the repair: %+v", s.name, g)
			}
		}
		run(t, "nft", "delete", "table", "ip", table)
		if g := gaps(); len(g) != 1 || !strings.Contains(g[0].What, "table ip "+table+" is missing") {
			t.Errorf("table deleted: gaps %+v", g)
		}
	})
}
