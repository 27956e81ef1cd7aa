package bridge

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// syncTestState is two networks (one dual-stack, routed for IPv6, with a
// trusted interface) and an endpoint each with published ports, nat and
// routed.
func syncTestState() ([]model.Network, []model.Endpoint) {
	n1 := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	n2 := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
	n2.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:2::/64"), Gateway: netip.MustParsePrefix("fd00:2::1/64")}}
	n2.Routed6, n2.TrustedInterfaces = true, []string{"eth3"}
	ep1, ports := nftTestPorts(n1)
	ep1.Ports = ports[:2]
	ep2 := testEndpoint(n2, eid2)
	ep2.Ports = []model.PortMapping{
		{Proto: "tcp", HostPort: 9090, HostPortEnd: 9090, ContainerIP: netip.MustParseAddr("10.2.0.2"), Port: 90},
		{Proto: "tcp", ContainerIP: netip.MustParseAddr("fd00:2::2"), Port: 90},
	}
	return []model.Network{n1, n2}, []model.Endpoint{ep1, ep2}
}

// TestNFTEnsureRulesRepairsTheDifference: with everything in place the
// reconcile's check writes nothing and reports nothing; after each kind of
// outside damage it reports a repair and the ruleset is again what it was;
// Docker 29's table coming and going is followed in the docker-bridges
// set. (Before the comparison, ensureAll rewrote every chain and always
// reported 0: the repairs here were not reported.)
func TestNFTEnsureRulesRepairsTheDifference(t *testing.T) {
	withNFTDataplane(t, func(d *Dataplane) {
		ctx := context.Background()
		networks, endpoints := syncTestState()
		table := model.NFTTableName("mynet-test")
		for _, n := range networks {
			if err := d.EnsureNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		for i, ep := range endpoints {
			if err := d.EnsurePorts(ctx, networks[i], ep, ep.Ports); err != nil {
				t.Fatal(err)
			}
		}
		before := nftRuleset(t)
		if repaired, err := d.EnsureRules(ctx, networks, endpoints); err != nil || len(repaired) != 0 {
			t.Fatalf("EnsureRules with nothing to repair = %v, %v", repaired, err)
		}
		if after := nftRuleset(t); after != before {
			t.Fatalf("EnsureRules with nothing to repair changed the ruleset:\n--- before\n%s--- after\n%s", before, after)
		}
		in1 := model.NFTNetworkChain(nid1, model.NFTChainIn)
		for _, damage := range []struct {
			name string
			cmd  []string
		}{
			{"network chain flushed", []string{"flush", "chain", "ip", table, in1}},
			{"rule added to a network chain", []string{"add", "rule", "ip", table, in1, "accept"}},
			{"base chain flushed", []string{"flush", "chain", "ip", table, "forward"}},
			{"port element deleted", []string{"delete", "element", "ip", table, "ports-any", "{ tcp . 8080 }"}},
			{"routed element deleted", []string{"delete", "element", "ip6", table, "routed", "{ fd00:2::2 . tcp . 90 }"}},
			{"jump element deleted", []string{"delete", "element", "ip", table, "direct-jumps", `{ "mn-aaaaaaaaaaaa" }`}},
			{"ip6 table deleted", []string{"delete", "table", "ip6", table}},
		} {
			run(t, append([]string{"nft"}, damage.cmd...)...)
			repaired, err := d.EnsureRules(ctx, networks, endpoints)
			if err != nil {
				t.Fatalf("%s: %v", damage.name, err)
			}
			if len(repaired) == 0 {
				t.Errorf("%s: EnsureRules reported no repair", damage.name)
			}
			if after := nftRuleset(t); after != before {
				t.Errorf("%s: after EnsureRules (%v):\n--- want\n%s--- got\n%s", damage.name, repaired, before, after)
			}
		}

		// Docker 29's table names a bridge: the reconcile copies it into
		// the docker-bridges set, and takes it out when Docker's is gone.
		fpBefore, err := d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		run(t, "nft", "-f", "testdata/nft/docker29-bridges-ip.nft")
		fpAfter, err := d.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		// The reconcile follows Docker's bridges for the networks in
		// nat-unprotected when this digest changes.
		if fpAfter[model.DigestDocker] == fpBefore[model.DigestDocker] {
			t.Errorf("the fingerprint's %s did not change when Docker's table came", model.DigestDocker)
		}
		if repaired, err := d.EnsureRules(ctx, networks, endpoints); err != nil || !slices.Equal(repaired, []string{"nftables ip: 1 rules"}) {
			t.Errorf("after Docker's table came: EnsureRules = %v, %v; want one element added", repaired, err)
		}
		if got := nftList(t, "ip", table); !strings.Contains(got, `"br-dummy"`) {
			t.Errorf("Docker's bridge is not in the docker-bridges set:\n%s", got)
		}
		run(t, "nft", "delete", "table", "ip", "docker-bridges")
		if repaired, err := d.EnsureRules(ctx, networks, endpoints); err != nil || len(repaired) != 1 {
			t.Errorf("after Docker's table went: EnsureRules = %v, %v; want one element removed", repaired, err)
		}
		if after := nftRuleset(t); after != before {
			t.Errorf("after Docker's table went:\n--- want\n%s--- got\n%s", before, after)
		}

		// A failed repair undoes what it added: the ip6 table it created
		// goes again.
		run(t, "nft", "delete", "table", "ip6", table)
		var undo netutil.Undo
		if _, err := d.fw6.ensureAll(ctx, networks, endpoints, &undo); err != nil {
			t.Fatal(err)
		}
		failed := fmt.Errorf("a later step failed")
		undo.Rollback(&failed, d.log)
		if got := nftList(t, "ip6", table); got != "" {
			t.Errorf("the rolled back repair left the ip6 table:\n%s", got)
		}

		for _, n := range networks {
			if err := d.DeleteNetwork(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		if got := nftRuleset(t); got != "" {
			t.Fatalf("ruleset left after deleting the networks:\n%s", got)
		}
	})
}

// BenchmarkNFTReconcile is a periodic pass with nothing to repair at
// issue 13's size: 100 networks, 1,000 endpoints, 1,000 published ports:
// EnsureRules (one read of the table and the comparison) and the
// firewall's part of the fingerprint. Issue 13's target: 10 ms.
func BenchmarkNFTReconcile(b *testing.B) {
	withNFTDataplane(b, func(d *Dataplane) {
		ctx := context.Background()
		var networks []model.Network
		var endpoints []model.Endpoint
		for i := range 100 {
			id := fmt.Sprintf("%012x%052d", i+1, 0)
			n := testNetwork(id, fmt.Sprintf("10.%d.0.0/16", 100+i), fmt.Sprintf("10.%d.0.1/16", 100+i))
			networks = append(networks, n)
			for j := range 10 {
				ep := testEndpoint(n, fmt.Sprintf("%012x%052d", 1000+10*i+j, 0))
				hp := uint16(20000 + 10*i + j)
				ep.Ports = []model.PortMapping{{Proto: "tcp", HostPort: hp, HostPortEnd: hp,
					ContainerIP: netip.AddrFrom4([4]byte{10, byte(100 + i), 0, byte(2 + j)}), Port: 80}}
				endpoints = append(endpoints, ep)
			}
		}
		if _, err := d.EnsureRules(ctx, networks, endpoints); err != nil {
			b.Fatal(err)
		}
		for _, changed := range []bool{false, true} {
			b.Run(fmt.Sprintf("ruleset-changed=%v", changed), func(b *testing.B) {
				var ensure, fingerprint time.Duration
				// The sockets stay in the test's namespace; the passes run
				// on a goroutine of no locked thread, as mynet's reconcile
				// does: on the test's locked thread each socket wait hands
				// the thread over.
				done := make(chan struct{})
				b.ResetTimer()
				go func() {
					defer close(done)
					passes(b, d, networks, endpoints, changed, &ensure, &fingerprint)
				}()
				<-done
				b.StopTimer()
				b.ReportMetric(float64(ensure.Microseconds())/float64(b.N)/1000, "ensure-ms/op")
				b.ReportMetric(float64(fingerprint.Microseconds())/float64(b.N)/1000, "fingerprint-ms/op")
			})
		}
	})
}

// passes runs b.N passes; with changed, a commit to another table before
// each (as Docker's rules change when its containers come and go), so
// that each pass reads the table whole.
func passes(b *testing.B, d *Dataplane, networks []model.Network, endpoints []model.Endpoint, changed bool, ensure, fingerprint *time.Duration) {
	ctx := context.Background()
	f := d.fw4.(*nftFirewall)
	other := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "other"}
	for i := range b.N {
		if changed {
			if i%2 == 0 {
				f.conn.AddTable(other)
			} else {
				f.conn.DelTable(other)
			}
			if err := f.conn.Flush(); err != nil {
				b.Error(err)
				return
			}
		}
		t0 := time.Now()
		repaired, err := d.EnsureRules(ctx, networks, endpoints)
		if err != nil || len(repaired) != 0 {
			b.Errorf("EnsureRules = %v, %v; want nothing to repair", repaired, err)
			return
		}
		t1 := time.Now()
		if _, err := d.fw4.ownLines(); err != nil {
			b.Error(err)
			return
		}
		*ensure, *fingerprint = *ensure+t1.Sub(t0), *fingerprint+time.Since(t1)
	}
}
