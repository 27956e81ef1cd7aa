package driver

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
)

// gate holds whoever reaches it first (hold) until open is called.
type gate struct {
	entered, opened chan struct{}
	once, openOnce  sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{entered: make(chan struct{}), opened: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) hold() {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.opened
	}
}

func (g *gate) open() { g.openOnce.Do(func() { close(g.opened) }) }

// settledDriver returns a driver with network n1, endpoint epA publishing
// host port 8080 and endpoint epB without ports, whose passes have taken
// all of it in.
func settledDriver(t *testing.T) (d *Driver, fake *drivertest.Dataplane, n1, epA, epB string) {
	t.Helper()
	ctx := context.Background()
	fake = drivertest.New()
	d = newTestDriver(t, Config{Dataplane: fake})
	if err := d.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	n1, epA, epB = strings.Repeat("1", 64), strings.Repeat("a", 64), strings.Repeat("b", 64)
	createNetworks(t, d, n1)
	createEndpoints(t, d, n1, epA, epB)
	if err := d.ProgramExternalConnectivity(ctx, n1, epA, tcp(8080, 80)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if repaired, err := d.Reconcile(ctx, false); err != nil || repaired {
			t.Fatalf("Reconcile = %v, %v; want no repair", repaired, err)
		}
	}
	return d, fake, n1, epA, epB
}

// TestRecheckLetsEndpointCallsThrough: the recheck of every tenth
// periodic pass (and the full pass of SIGHUP) compares the whole kernel
// with the state while containers start and stop: held inside its ensure
// of a bridge, of an endpoint, or of the rules, a new container's calls
// (CreateEndpoint, Join, ports published and unpublished by Leave,
// DeleteEndpoint) and another container's DeleteEndpoint complete. Before,
// the pass held opMu alone throughout, and every one of them waited.
func TestRecheckLetsEndpointCallsThrough(t *testing.T) {
	for _, tc := range []struct {
		name string
		full bool
		set  func(f *drivertest.Dataplane, g *gate, epA string)
	}{
		{"held in a bridge's ensure", false, func(f *drivertest.Dataplane, g *gate, _ string) {
			f.OnEnsureBridge = func(model.Network) { g.hold() }
		}},
		{"held in an endpoint's ensure", false, func(f *drivertest.Dataplane, g *gate, epA string) {
			f.AfterEnsure = func(ep model.Endpoint) error {
				if ep.ID == epA {
					g.hold()
				}
				return nil
			}
		}},
		{"held in the rules' ensure", false, func(f *drivertest.Dataplane, g *gate, _ string) {
			f.OnEnsureRules = g.hold
		}},
		{"a full pass held in the rules' ensure", true, func(f *drivertest.Dataplane, g *gate, _ string) {
			f.OnEnsureRules = g.hold
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d, fake, n1, epA, epB := settledDriver(t)
			g := newGate(t)
			fake.Mu.Lock()
			tc.set(fake, g, epA)
			fake.Mu.Unlock()
			if !tc.full {
				d.Recheck()
			}
			passed := make(chan error, 1)
			go func() { _, err := d.Reconcile(ctx, tc.full); passed <- err }()
			<-g.entered
			id := strings.Repeat("c", 64)
			calls := []struct {
				what string
				call func() error
			}{
				{"CreateEndpoint", func() error {
					_, err := d.CreateEndpoint(ctx, n1, id, Interface{Address: "10.200.0.20/24"})
					return err
				}},
				{"Join", func() error { _, err := d.Join(n1, id); return err }},
				{"ProgramExternalConnectivity", func() error { return d.ProgramExternalConnectivity(ctx, n1, id, tcp(8081, 80)) }},
				{"Leave", func() error { return d.Leave(ctx, n1, id) }},
				{"DeleteEndpoint", func() error { return d.DeleteEndpoint(ctx, n1, id) }},
				{"DeleteEndpoint of another endpoint", func() error { return d.DeleteEndpoint(ctx, n1, epB) }},
			}
			for _, c := range calls {
				if err := finishes(t, c.what+" during a recheck", c.call); err != nil {
					t.Fatalf("%s: %v", c.what, err)
				}
			}
			g.open()
			if err := <-passed; err != nil {
				t.Fatal(err)
			}
			// What the calls changed meanwhile is mynet's own: no pass
			// takes it for damage.
			for range 2 {
				if repaired, err := d.Reconcile(ctx, false); err != nil || repaired {
					t.Fatalf("Reconcile after = %v, %v; want no repair", repaired, err)
				}
			}
			fake.Mu.Lock()
			defer fake.Mu.Unlock()
			if _, ok := fake.Endpoints[epA]; !ok || len(fake.Ports[epA]) == 0 {
				t.Fatal("endpoint A or its ports gone after the recheck")
			}
			for _, gone := range []string{id, epB} {
				if _, ok := fake.Endpoints[gone]; ok {
					t.Fatalf("deleted endpoint %s is back in the kernel", gone[:1])
				}
			}
		})
	}
}

// TestRecheckLeavesEndpointsBeingCreated: an endpoint whose veth exists
// while its record is not committed yet is no orphan; a recheck then
// finishes without waiting for the create and leaves its veth alone.
func TestRecheckLeavesEndpointsBeingCreated(t *testing.T) {
	ctx := context.Background()
	d, fake, n1, _, _ := settledDriver(t)
	id := strings.Repeat("c", 64)
	g := newGate(t)
	fake.Mu.Lock()
	fake.AfterEnsure = func(ep model.Endpoint) error {
		if ep.ID == id {
			g.hold()
		}
		return nil
	}
	fake.Mu.Unlock()
	created := make(chan error, 1)
	go func() {
		_, err := d.CreateEndpoint(ctx, n1, id, Interface{Address: "10.200.0.20/24"})
		created <- err
	}()
	<-g.entered
	d.Recheck()
	if err := finishes(t, "a recheck during a create", func() error { _, err := d.Reconcile(ctx, false); return err }); err != nil {
		t.Fatal(err)
	}
	fake.Mu.Lock()
	_, ok := fake.Endpoints[id]
	fake.Mu.Unlock()
	if !ok {
		t.Fatal("the recheck removed the veth of an endpoint being created")
	}
	g.open()
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Endpoint(id); !ok {
		t.Fatal("endpoint not committed")
	}
}

// TestRecheckRepairsWhatPassesTookIn: damage that a pass took in with
// mynet's own changes (so that no fingerprint comparison finds it) is
// repaired by the recheck: a bridge and an endpoint's port rules
// restored, an endpoint whose veth went dropped, an orphaned veth
// removed; and the pass after reports nothing, since the recheck took its
// repairs in.
func TestRecheckRepairsWhatPassesTookIn(t *testing.T) {
	for _, full := range []bool{false, true} {
		ctx := context.Background()
		d, fake, n1, epA, epB := settledDriver(t)
		orphan := strings.Repeat("f", 64)
		fake.Mu.Lock()
		delete(fake.Networks, n1)
		delete(fake.Ports, epA)
		delete(fake.Endpoints, epB)
		fake.Endpoints[orphan] = model.Endpoint{ID: orphan, NetworkID: n1}
		fake.Mu.Unlock()
		// A pass takes the damage in, as one that ran while mynet changed
		// the same objects would.
		d.reconMu.Lock()
		fp, sfp, err := d.fingerprints()
		if err != nil {
			t.Fatal(err)
		}
		d.adopt(fp, sfp, d.changes.Load(), false)
		d.reconMu.Unlock()
		if repaired, err := d.Reconcile(ctx, false); err != nil || repaired {
			t.Fatalf("a pass that compares fingerprints only = %v, %v; want nothing found", repaired, err)
		}
		if !full {
			d.Recheck()
		}
		if _, err := d.Reconcile(ctx, full); err != nil {
			t.Fatal(err)
		}
		fake.Mu.Lock()
		_, bridge := fake.Networks[n1]
		ports := len(fake.Ports[epA])
		_, orphaned := fake.Endpoints[orphan]
		fake.Mu.Unlock()
		if !bridge || ports == 0 || orphaned {
			t.Fatalf("full %v: after the recheck: bridge %v, %d ports of A, orphan %v; want true, 1, false", full, bridge, ports, orphaned)
		}
		if _, ok := d.Endpoint(epB); ok {
			t.Fatalf("full %v: endpoint B, whose veth is gone, was kept", full)
		}
		if repaired, err := d.Reconcile(ctx, false); err != nil || repaired {
			t.Fatalf("full %v: the pass after the recheck = %v, %v; want no repair", full, repaired, err)
		}
	}
}

// TestRecheckLetsNetworkOperationsIn: a network operation, which needs
// opMu alone, waits for one step of a recheck (an endpoint's ensure), not
// for all of it: a writer waiting on opMu holds up every endpoint call
// behind it, so a recheck that kept opMu shared throughout stopped them
// all as soon as a network was created or deleted meanwhile.
func TestRecheckLetsNetworkOperationsIn(t *testing.T) {
	ctx := context.Background()
	d, fake, _, epA, _ := settledDriver(t)
	inEndpoint, inRules := newGate(t), newGate(t)
	fake.Mu.Lock()
	fake.AfterEnsure = func(ep model.Endpoint) error {
		if ep.ID == epA {
			inEndpoint.hold()
		}
		return nil
	}
	fake.OnEnsureRules = inRules.hold
	fake.Mu.Unlock()
	d.Recheck()
	passed := make(chan error, 1)
	go func() { _, err := d.Reconcile(ctx, false); passed <- err }()
	<-inEndpoint.entered
	n2 := strings.Repeat("2", 64)
	created := make(chan error, 1)
	go func() {
		created <- d.CreateNetwork(ctx, testNetwork(n2, "10.201.0.0/24", "10.201.0.1/24"))
	}()
	for d.opMu.TryRLock() { // until the create waits for opMu alone
		d.opMu.RUnlock()
		runtime.Gosched()
	}
	inEndpoint.open()
	<-inRules.entered
	if err := finishes(t, "a CreateNetwork during a recheck", func() error { return <-created }); err != nil {
		t.Fatal(err)
	}
	if err := finishes(t, "a CreateEndpoint on it during the recheck", func() error {
		_, err := d.CreateEndpoint(ctx, n2, strings.Repeat("c", 64), Interface{Address: "10.201.0.10/24"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	inRules.open()
	if err := <-passed; err != nil {
		t.Fatal(err)
	}
}
