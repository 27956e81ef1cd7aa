package driver

import (
	"context"
	"os"
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
