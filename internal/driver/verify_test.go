package driver

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
)

// TestVerifyPortsAtOnce: the pass that takes in mynet's own changes
// ensures again the ports of every endpoint that changed with one
// EnsureRules, not an EnsurePorts (a read of the whole ruleset) per
// endpoint; and a port removed from outside in the same interval comes
// back. Per endpoint, 1,000 containers started cost the next pass twenty
// seconds of nftables reads.
func TestVerifyPortsAtOnce(t *testing.T) {
	ctx := t.Context()
	fake := drivertest.New()
	d := newTestDriver(t, Config{Dataplane: fake})
	if err := d.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	nid := strings.Repeat("1", 64)
	createNetworks(t, d, nid)
	eps := []string{strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)}
	createEndpoints(t, d, nid, eps...)
	for i, ep := range eps {
		if err := d.ProgramExternalConnectivity(ctx, nid, ep, tcp(uint16(8080+i), 80)); err != nil {
			t.Fatal(err)
		}
	}
	var perEndpoint, atOnce atomic.Int32
	fake.Mu.Lock()
	delete(fake.Ports, eps[1]) // damage in the interval of mynet's own changes
	fake.OnPorts = func(model.Endpoint) error { perEndpoint.Add(1); return nil }
	fake.OnEnsureRules = func() { atOnce.Add(1) }
	fake.Mu.Unlock()
	if _, err := d.Reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	fake.Mu.Lock()
	restored := len(fake.Ports[eps[1]]) > 0
	fake.Mu.Unlock()
	if perEndpoint.Load() != 0 || atOnce.Load() != 1 || !restored {
		t.Fatalf("the pass: %d EnsurePorts, %d EnsureRules, removed port restored %v; want 0, 1, true",
			perEndpoint.Load(), atOnce.Load(), restored)
	}
}
