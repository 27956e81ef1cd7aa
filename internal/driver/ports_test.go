package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
)

// blockedFor bounds how long a call may stay blocked before the test calls
// it a deadlock: generous, since it only tells "waits for the publish"
// from "does not", never how fast anything is.
const blockedFor = 10 * time.Second

// finishes runs fn and fails the test if it has not returned within
// blockedFor.
func finishes(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(blockedFor):
		t.Fatalf("%s still blocked after %v: it waits for work it must not wait for", what, blockedFor)
		return nil
	}
}

func tcp(hostPort, port uint16) []PortBinding {
	return []PortBinding{{Proto: 6, Port: port, HostPort: hostPort, HostPortEnd: hostPort}}
}

// createNetworks creates networks 10.200.0.0/24, 10.201.0.0/24, ... in
// the order given.
func createNetworks(t *testing.T, d *Driver, ids ...string) {
	t.Helper()
	for i, n := range ids {
		if err := d.CreateNetwork(context.Background(), testNetwork(n, fmt.Sprintf("10.%d.0.0/24", 200+i), fmt.Sprintf("10.%d.0.1/24", 200+i))); err != nil {
			t.Fatal(err)
		}
	}
}

// createEndpoints creates endpoints on networkID, the first of
// createNetworks, at .10, .11, ... in the order given.
func createEndpoints(t *testing.T, d *Driver, networkID string, ids ...string) {
	t.Helper()
	for i, ep := range ids {
		if _, err := d.CreateEndpoint(context.Background(), networkID, ep, Interface{Address: fmt.Sprintf("10.200.0.%d/24", 10+i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// publishBlocked starts a publish of host port 8080 on epA that stays in
// its EnsurePorts until release is called; published gets its result.
func publishBlocked(t *testing.T, d *Driver, fake *drivertest.Dataplane, networkID, epA string) (release func(), published <-chan error) {
	t.Helper()
	entered, unblock := make(chan struct{}), make(chan struct{})
	fake.Mu.Lock()
	fake.OnPorts = func(ep model.Endpoint) error {
		if ep.ID == epA {
			close(entered)
			<-unblock
		}
		return nil
	}
	fake.Mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- d.ProgramExternalConnectivity(context.Background(), networkID, epA, tcp(8080, 80)) }()
	<-entered
	var once sync.Once
	release = func() { once.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	return release, done
}

// TestPublishHoldsUpNoOtherEndpoint: while one endpoint's port rules are
// being written, other containers come and go, publish other host ports
// and leave; only a publish of the same host port is refused, since the
// port is reserved.
func TestPublishHoldsUpNoOtherEndpoint(t *testing.T) {
	ctx := context.Background()
	fake := drivertest.New()
	d := newTestDriver(t, Config{Dataplane: fake})
	n1, n2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	createNetworks(t, d, n1, n2)
	epA, epB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	createEndpoints(t, d, n1, epA, epB)

	release, published := publishBlocked(t, d, fake, n1, epA)

	for i, n := range []string{n1, n2} {
		id := fmt.Sprintf("%064x", 0xc0+i)
		err := finishes(t, "an endpoint's create, join and delete", func() error {
			if _, err := d.CreateEndpoint(ctx, n, id, Interface{Address: fmt.Sprintf("10.%d.0.99/24", 200+i)}); err != nil {
				return err
			}
			if _, err := d.Join(n, id); err != nil {
				return err
			}
			return d.DeleteEndpoint(ctx, n, id)
		})
		if err != nil {
			t.Fatalf("network %d: %v", i+1, err)
		}
	}
	err := finishes(t, "a publish of the same host port", func() error {
		return d.ProgramExternalConnectivity(ctx, n1, epB, tcp(8080, 81))
	})
	var held *portHeldError
	if !errors.As(err, &held) || held.owner == nil || held.owner.ID != epA {
		t.Fatalf("publish of host port 8080 while endpoint A publishes it: got %v, want a conflict naming endpoint %s", err, model.Short(epA))
	}
	if err := finishes(t, "a publish of another host port", func() error {
		return d.ProgramExternalConnectivity(ctx, n1, epB, tcp(8081, 81))
	}); err != nil {
		t.Fatalf("publish of host port 8081: %v", err)
	}
	if err := finishes(t, "a leave", func() error { return d.Leave(ctx, n1, epB) }); err != nil {
		t.Fatalf("leave of endpoint B: %v", err)
	}

	release()
	if err := <-published; err != nil {
		t.Fatalf("publish of endpoint A: %v", err)
	}
	fake.Mu.Lock()
	defer fake.Mu.Unlock()
	if got := fake.Ports[epA]; len(got) != 1 || got[0].HostPort != 8080 {
		t.Errorf("endpoint A's rules: %v, want host port 8080", got)
	}
	if got := fake.Ports[epB]; len(got) != 0 {
		t.Errorf("endpoint B's rules after its leave: %v, want none", got)
	}
	if len(d.reserved) != 0 {
		t.Errorf("reservations left: %v", d.reserved)
	}
}

// TestPublishTakesOverFromDeadOwner: a host port held by an endpoint whose
// veth is gone (its container died with the engine) goes to the new
// publish, and the dead endpoint is dropped.
func TestPublishTakesOverFromDeadOwner(t *testing.T) {
	ctx := context.Background()
	fake := drivertest.New()
	d := newTestDriver(t, Config{Dataplane: fake, OwnerGoneWait: time.Millisecond})
	n1 := strings.Repeat("1", 64)
	createNetworks(t, d, n1)
	epA, epB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	createEndpoints(t, d, n1, epA, epB)
	if err := d.ProgramExternalConnectivity(ctx, n1, epA, tcp(8080, 80)); err != nil {
		t.Fatal(err)
	}
	var held *portHeldError
	if err := d.ProgramExternalConnectivity(ctx, n1, epB, tcp(8080, 80)); !errors.As(err, &held) {
		t.Fatalf("positive control: publish of a port a live endpoint holds: got %v, want a conflict", err)
	}
	fake.Mu.Lock()
	delete(fake.Endpoints, epA) // the veth went with the container
	fake.Mu.Unlock()
	if err := d.ProgramExternalConnectivity(ctx, n1, epB, tcp(8080, 80)); err != nil {
		t.Fatalf("publish of a port a dead endpoint holds: %v", err)
	}
	if d.committed(epA) {
		t.Errorf("dead endpoint %s is still in the state", model.Short(epA))
	}
}

// TestRevokeWithoutPortsWaitsForNothing: a container that publishes nothing
// leaves without queueing for opMu, where it would wait behind a pass that
// waits for another container's port rules (sync.RWMutex lets no reader in
// while a writer waits).
func TestRevokeWithoutPortsWaitsForNothing(t *testing.T) {
	ctx := context.Background()
	fake := drivertest.New()
	d := newTestDriver(t, Config{Dataplane: fake})
	n1 := strings.Repeat("1", 64)
	createNetworks(t, d, n1)
	epA, epC := strings.Repeat("a", 64), strings.Repeat("c", 64)
	createEndpoints(t, d, n1, epA, epC)
	release, published := publishBlocked(t, d, fake, n1, epA)
	passDone := make(chan struct{})
	go func() { // a writer of opMu, as a pass was before lockForPass
		d.opMu.Lock()
		close(passDone)
		d.opMu.Unlock()
	}()
	time.Sleep(50 * time.Millisecond) // let the pass queue for the lock
	if err := finishes(t, "a revoke of an endpoint without ports", func() error {
		return d.RevokeExternalConnectivity(ctx, epC)
	}); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	<-passDone
}

// TestPassDoesNotStopEndpointCalls: a reconcile pass that finds a publish
// under way does not queue for opMu at first, so container starts go on
// meanwhile instead of waiting behind it.
func TestPassDoesNotStopEndpointCalls(t *testing.T) {
	ctx := context.Background()
	fake := drivertest.New()
	d := newTestDriver(t, Config{Dataplane: fake})
	n1, n2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	createNetworks(t, d, n1, n2)
	epA := strings.Repeat("a", 64)
	if _, err := d.CreateEndpoint(ctx, n1, epA, Interface{Address: "10.200.0.10/24"}); err != nil {
		t.Fatal(err)
	}
	release, published := publishBlocked(t, d, fake, n1, epA)
	passed := make(chan error, 1)
	go func() { _, err := d.pass(ctx, true); passed <- err }()
	time.Sleep(50 * time.Millisecond) // the pass is trying for the lock
	// Well within passLockPatience, after which the pass queues.
	id := strings.Repeat("c", 64)
	if err := finishes(t, "an endpoint's create during a pass", func() error {
		_, err := d.CreateEndpoint(ctx, n2, id, Interface{Address: "10.201.0.10/24"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if err := <-passed; err != nil {
		t.Fatal(err)
	}
}

// TestPassWaitsForJanitorUnlocked: a pass that finds an endpoint call in
// flight takes opMu alone once the call is done, and its fingerprints
// first wait for the dataplane's deferred cleanups (a deleted
// container's veth, tens of milliseconds on a busy host). That wait must
// come before opMu is taken alone, or every container start waits for
// it: bench phase 9 saw a port-less ProgramExternalConnectivity take
// 82 ms while 1,000-port containers came and went. Fails on the code
// before (the publish below waits for the janitor).
func TestPassWaitsForJanitorUnlocked(t *testing.T) {
	ctx := context.Background()
	fake := drivertest.New()
	d := newTestDriver(t, Config{Dataplane: fake})
	n1 := strings.Repeat("1", 64)
	createNetworks(t, d, n1)
	epA, epB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	createEndpoints(t, d, n1, epA, epB)
	if _, err := d.Reconcile(ctx, false); err != nil { // take mynet's changes in
		t.Fatal(err)
	}
	release, published := publishBlocked(t, d, fake, n1, epA)
	// A slow janitor: the next Sync waits until the test lets it go.
	janitor, syncing := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fake.Mu.Lock()
	fake.OnSync = func() {
		once.Do(func() { close(syncing); <-janitor })
	}
	fake.Mu.Unlock()
	t.Cleanup(func() { close(janitor) })
	passDone := make(chan error, 1)
	go func() { _, err := d.Reconcile(ctx, false); passDone <- err }()
	// The pass must see the publish in flight; it then waits to take opMu
	// alone, which it gets once the publish is done. Nothing to wait on
	// tells it got there: a pass that did not would take its fingerprints
	// with opMu shared and let this test pass either way, never fail it.
	time.Sleep(200 * time.Millisecond)
	release()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	fake.Mu.Lock()
	fake.OnPorts = nil // the pass ensures A's ports again
	fake.Mu.Unlock()
	select {
	case <-syncing:
	case <-time.After(10 * time.Second):
		t.Fatal("the pass never waited for the janitor")
	}
	if err := finishes(t, "a port-less publish while the pass waits for the janitor", func() error {
		return d.ProgramExternalConnectivity(ctx, n1, epB, nil)
	}); err != nil {
		t.Fatal(err)
	}
}
