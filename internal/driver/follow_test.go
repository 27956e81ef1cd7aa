package driver

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
)

// TestReconcileFollowsFirewall: the periodic pass that sees Docker's rules
// in another backend has the dataplane move mynet's rules there, with
// every network and every published port; the move is counted, and not
// reported as a repair of damage. A failed move fails the pass and the
// next one tries again; once moved, passes are quiet.
func TestReconcileFollowsFirewall(t *testing.T) {
	ctx := t.Context()
	fake := drivertest.New()
	fake.Firewall, fake.DockerFirewall = model.FirewallIPTables, model.FirewallIPTables
	switches := &counter{}
	d := newTestDriver(t, Config{Dataplane: fake, FirewallSwitches: switches})
	if err := d.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	n1, n2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	createNetworks(t, d, n1, n2)
	epA, epB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	createEndpoints(t, d, n1, epA, epB)
	if err := d.ProgramExternalConnectivity(ctx, n1, epA, tcp(8080, 80)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Reconcile(ctx, false); err != nil { // take mynet's own changes in
		t.Fatal(err)
	}
	if switches.n.Load() != 0 {
		t.Fatalf("with Docker's rules where mynet's are, %d moves counted", switches.n.Load())
	}

	fake.Mu.Lock()
	fake.DockerFirewall = model.FirewallNFTables // dockerd restarted on nftables
	fake.FailNext = errors.New("netlink: operation not permitted")
	fake.Mu.Unlock()
	if _, err := d.Reconcile(ctx, false); err == nil || fake.Firewall != model.FirewallIPTables || switches.n.Load() != 0 {
		t.Fatalf("a failed move: pass error %v, backend %s, %d moves counted; want an error, iptables, 0", err, fake.Firewall, switches.n.Load())
	}
	repaired, err := d.Reconcile(ctx, false)
	if err != nil || repaired {
		t.Fatalf("the pass after a failed move: repaired %v, %v; want a quiet move", repaired, err)
	}
	fake.Mu.Lock()
	moved := slices.Sorted(slices.Values(fake.Moved))
	backend := fake.Firewall
	fake.Mu.Unlock()
	if want := []string{"ep:" + epA, "net:" + n1, "net:" + n2}; backend != model.FirewallNFTables || !slices.Equal(moved, want) || switches.n.Load() != 1 {
		t.Fatalf("after the move: backend %s, moved %v, %d moves counted; want nftables, %v, 1", backend, moved, switches.n.Load(), want)
	}
	for range 2 {
		if repaired, err := d.Reconcile(ctx, false); err != nil || repaired || switches.n.Load() != 1 {
			t.Fatalf("a pass after the move: repaired %v, %v, %d moves; want a quiet pass", repaired, err, switches.n.Load())
		}
	}
}
