package cluster

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/model"
)

func host(id, vtep string) model.ClusterHost {
	return model.ClusterHost{ID: id, VTEP: netip.MustParseAddr(vtep)}
}

func TestRegisterHost(t *testing.T) {
	m := &fakeMetrics{}
	s := newStore(t, nil, func(c *Config) { c.Metrics = m.hooks() })
	s2 := newStore(t, nil, func(c *Config) { c.Metrics = m.hooks() })
	ctx := ctxT(t)
	first, err := s.RegisterHost(ctx, host("a", "198.19.77.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Close(ctx) })
	if !first.Up() || m.up != 1 {
		t.Errorf("registered: Up %v, store_up %v", first.Up(), m.up)
	}
	steps := []struct {
		name    string
		host    model.ClusterHost
		wantErr error
	}{
		{"a clone on another VTEP is refused", host("a", "198.19.77.2"), ErrHostIDClash},
		{"another host", host("b", "198.19.77.2"), nil},
		{"a restart on the same VTEP takes over", host("a", "198.19.77.1"), nil},
		{"bad ID", host("a/b", "198.19.77.3"), model.ErrInvalidClusterName},
	}
	var regs []*Registration // closed at the end: the subtests' cleanups would close them early
	t.Cleanup(func() {
		for _, r := range regs {
			_ = r.Close(ctx)
		}
	})
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r, err := s2.RegisterHost(ctx, st.host)
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("err = %v, want %v", err, st.wantErr)
			}
			if err == nil {
				regs = append(regs, r)
			}
		})
	}
	hosts, err := s.Hosts(ctx)
	if err != nil || len(hosts) != 2 || !hosts[0].Alive || !hosts[1].Alive {
		t.Fatalf("hosts = %+v, %v", hosts, err)
	}
	resp, err := s.cli.Get(ctx, s.keys.Alive("a"))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == int64(first.lease.Load()) {
		t.Errorf("after the takeover the liveness key is still on the old lease: %v %v", resp, err)
	}
	if m.ops["register"] != 4 || m.ops["list"] != 1 {
		t.Errorf("request durations observed: %v, want register 4, list 1", m.ops)
	}
	if m.conflicts != 1 {
		t.Errorf("conflicts = %d, want 1 (the clash)", m.conflicts)
	}
}

// TestLeaseLostAndRegainedAndClosed: a lease revoked behind the host's back
// (as when etcd expired it during a partition) is noticed and the host
// registers again; Close removes the liveness key at once.
func TestLeaseLostAndRegainedAndClosed(t *testing.T) {
	s := newStore(t, nil, func(c *Config) { c.LeaseTTL = 3 * time.Second })
	ctx := ctxT(t)
	r, err := s.RegisterHost(ctx, host("a", "198.19.77.1"))
	if err != nil {
		t.Fatal(err)
	}
	old := clientv3.LeaseID(r.lease.Load())
	if _, err := s.cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the host to register again", func() bool {
		return r.Up() && clientv3.LeaseID(r.lease.Load()) != old && aliveKeyExists(t, s, "a")
	})
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if aliveKeyExists(t, s, "a") {
		t.Error("Close left the liveness key")
	}
}

// TestDeadHostFreed: a host whose process dies (its client gone without a
// revoke) loses its liveness key when the lease expires, keeps its claims
// until a live host frees them, and is refused while it is alive.
func TestDeadHostFreed(t *testing.T) {
	live := newStore(t, nil, nil)
	dying := newStore(t, nil, func(c *Config) { c.LeaseTTL = 2 * time.Second })
	ctx := ctxT(t)
	for _, n := range []string{"app", "solo"} {
		if _, err := dying.CreateOrJoinNetwork(ctx, spec(n, "10.77.0.0/24", "10.77.0.1"), "b"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := live.CreateOrJoinNetwork(ctx, spec("app", "10.77.0.0/24", "10.77.0.1"), "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := dying.RegisterHost(ctx, host("b", "198.19.77.2")); err != nil {
		t.Fatal(err)
	}
	mine, err := live.ClaimAddress(ctx, "app", netip.Addr{}, advert("a"))
	if err != nil {
		t.Fatal(err)
	}
	for range 70 { // more than one transaction's worth
		if _, err := dying.ClaimAddress(ctx, "app", netip.Addr{}, advert("b")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := live.FreeDeadHost(ctx, "b"); !errors.Is(err, ErrHostAlive) {
		t.Fatalf("FreeDeadHost of a live host: %v, want ErrHostAlive", err)
	}
	start := time.Now()
	_ = dying.cli.Close() // the process dies: no revoke, keepalives stop
	waitFor(t, 10*time.Second, "the lease to expire", func() bool {
		hosts, err := live.Hosts(ctx)
		return err == nil && len(hosts) == 1 && !hosts[0].Alive
	})
	t.Logf("liveness key gone %.1fs after the host died (TTL 2s)", time.Since(start).Seconds())
	if advs, _, _ := live.Claims(ctx, "app"); len(advs) != 71 {
		t.Fatalf("%d claims after the lease expired, want 71: claims must not be on the lease", len(advs))
	}
	freed, err := live.FreeDeadHost(ctx, "b")
	if err != nil || freed != 70 {
		t.Fatalf("FreeDeadHost = %d, %v; want 70", freed, err)
	}
	advs, _, err := live.Claims(ctx, "app")
	if err != nil || len(advs) != 1 || advs[0].IP != mine {
		t.Errorf("claims after freeing: %+v, %v; want only %s", advs, err, mine)
	}
	rec, err := live.Network(ctx, "app")
	if err != nil || len(rec.Members) != 1 || rec.Members[0] != "a" {
		t.Errorf("app after freeing: %+v, %v", rec, err)
	}
	if _, err := live.Network(ctx, "solo"); !errors.Is(err, ErrNetworkNotFound) {
		t.Errorf("solo, whose only member died, is still there: %v", err)
	}
	if hosts, _ := live.Hosts(ctx); len(hosts) != 0 {
		t.Errorf("the dead host is still registered: %+v", hosts)
	}
	if freed, err := live.FreeDeadHost(ctx, "b"); err != nil || freed != 0 {
		t.Errorf("second FreeDeadHost = %d, %v", freed, err)
	}
}

func aliveKeyExists(t *testing.T, s *Store, id string) bool {
	t.Helper()
	resp, err := s.cli.Get(ctxT(t), s.keys.Alive(id))
	return err == nil && len(resp.Kvs) == 1
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
