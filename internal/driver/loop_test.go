package driver

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/driver/drivertest"
)

type counter struct{ n atomic.Int32 }

func (c *counter) Inc() { c.n.Add(1) }

// TestReconcileLoop: each signal on hup runs a full pass, which repairs
// damage from outside and counts it; the loop ends with its context.
func TestReconcileLoop(t *testing.T) {
	fake := drivertest.New()
	repairs, errs := &counter{}, &counter{}
	var passes atomic.Value // the kind of the last pass observed
	observe := func(kind string, d time.Duration) {
		if d <= 0 {
			kind = "no duration"
		}
		passes.Store(kind)
	}
	d := newTestDriver(t, Config{Dataplane: fake, Repairs: repairs, ReconcileErrors: errs, ObservePass: observe})
	if err := d.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	const nid = "1111111111111111111111111111111111111111111111111111111111111111"
	if err := d.CreateNetwork(t.Context(), testNetwork(nid, "10.1.0.0/24", "10.1.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Reconcile(t.Context(), false); err != nil { // take mynet's own change in
		t.Fatal(err)
	}
	fake.Mu.Lock()
	delete(fake.Networks, nid) // a bridge deleted from outside
	fake.Mu.Unlock()

	ctx, cancel := context.WithCancel(t.Context())
	hup := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() { defer close(done); d.ReconcileLoop(ctx, 0, hup) }()
	hup <- syscall.SIGHUP
	deadline := time.Now().Add(10 * time.Second)
	for repairs.n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	fake.Mu.Lock()
	_, restored := fake.Networks[nid]
	fake.Mu.Unlock()
	if !restored || repairs.n.Load() != 1 || errs.n.Load() != 0 {
		t.Fatalf("after SIGHUP: network restored %v, %d repairs and %d errors counted; want true, 1, 0", restored, repairs.n.Load(), errs.n.Load())
	}
	if got := passes.Load(); got != "full" {
		t.Fatalf("pass observed: %v, want full, with its duration", got)
	}
}

// TestRecheckOnlyAfterOwnChanges: the periodic loop's every-tenth pass
// rechecks only when mynet changed something since the last recheck (or
// the startup pass): with nothing changed, a change from outside shows in
// the fingerprints anyway. The test fails with the recheck taken every
// tenth tick regardless (ten ticks with no change must have no recheck).
func TestRecheckOnlyAfterOwnChanges(t *testing.T) {
	fake := drivertest.New()
	var kinds sync.Map // kind -> *atomic.Int32
	count := func(kind string) int32 {
		v, _ := kinds.LoadOrStore(kind, new(atomic.Int32))
		return v.(*atomic.Int32).Load()
	}
	observe := func(kind string, _ time.Duration) {
		v, _ := kinds.LoadOrStore(kind, new(atomic.Int32))
		v.(*atomic.Int32).Add(1)
	}
	d := newTestDriver(t, Config{Dataplane: fake, ObservePass: observe})
	const nid = "1111111111111111111111111111111111111111111111111111111111111111"
	if err := d.CreateNetwork(t.Context(), testNetwork(nid, "10.1.0.0/24", "10.1.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := d.Restore(t.Context()); err != nil { // as at startup: compares everything
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); d.ReconcileLoop(ctx, time.Millisecond, nil) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: periodic %d, recheck %d", what, count("periodic"), count("recheck"))
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("25 quiet ticks", func() bool { return count("periodic") >= 25 })
	if n := count("recheck"); n != 0 {
		t.Fatalf("%d rechecks with nothing changed since the startup pass, want 0", n)
	}
	const eid = "2222222222222222222222222222222222222222222222222222222222222222"
	if _, err := d.CreateEndpoint(t.Context(), nid, eid, Interface{Address: "10.1.0.2/24"}); err != nil {
		t.Fatal(err)
	}
	waitFor("a recheck after an endpoint was created", func() bool { return count("recheck") >= 1 })
	before := count("recheck")
	p := count("periodic")
	waitFor("25 more quiet ticks", func() bool { return count("periodic") >= p+25 })
	if n := count("recheck"); n != before {
		t.Fatalf("%d more rechecks with nothing changed since the last one, want 0", n-before)
	}
}
