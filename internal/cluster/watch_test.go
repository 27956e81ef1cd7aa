package cluster

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/model"
)

func nextEvent(t *testing.T, ch <-chan EndpointEvent) EndpointEvent {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return EndpointEvent{}
}

func ips(advs []model.EndpointAdvert) []string {
	var out []string
	for _, a := range advs {
		out = append(out, a.IP.String())
	}
	slices.Sort(out)
	return out
}

func TestWatchEndpoints(t *testing.T) {
	s := newStore(t, nil, nil)
	ctx := ctxT(t)
	for _, n := range []string{"app", "app2"} {
		if _, err := s.CreateOrJoinNetwork(ctx, spec(n, "10.77.0.0/24", "10.77.0.1"), "a"); err != nil {
			t.Fatal(err)
		}
	}
	first, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("a"))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	ch := s.WatchEndpoints(wctx, "app")
	if e := nextEvent(t, ch); e.Type != EventReset || !slices.Equal(ips(e.Adverts), []string{first.String()}) {
		t.Fatalf("first event %v %+v, want a reset with %s", e.Type, e.Adverts, first)
	}
	b := advert("b")
	b.MAC = "02:42:0a:4d:00:03"
	second, err := s.ClaimAddress(ctx, "app", netip.Addr{}, b)
	if err != nil {
		t.Fatal(err)
	}
	// A claim on network app2 must not show up on app's watch.
	if _, err := s.ClaimAddress(ctx, "app2", netip.Addr{}, advert("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseAddress(ctx, "app", second, "b"); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		typ EventType
		adv model.EndpointAdvert
	}{
		{EventPut, model.EndpointAdvert{Host: "b", IP: second, MAC: b.MAC, VTEP: b.VTEP}},
		{EventDelete, model.EndpointAdvert{Host: "b", IP: second, MAC: b.MAC, VTEP: b.VTEP}},
	}
	for _, w := range want {
		e := nextEvent(t, ch)
		if e.Type != w.typ || len(e.Adverts) != 1 || e.Adverts[0] != w.adv {
			t.Errorf("event %v %+v, want %v %+v", e.Type, e.Adverts, w.typ, w.adv)
		}
	}
	cancel()
	for range ch { // drains, and ends: the channel closes with the context
	}
}

// TestWatchRelistAfterCompaction: a watch resumed from a revision that has
// been compacted away lists again and sends the whole set as a reset.
func TestWatchRelistAfterCompaction(t *testing.T) {
	s := newStore(t, nil, nil)
	ctx := ctxT(t)
	if _, err := s.CreateOrJoinNetwork(ctx, spec("app", "10.77.0.0/24", "10.77.0.1"), "a"); err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.Claims(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for range 3 {
		a, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("a"))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, a.String())
	}
	if err := s.ReleaseAddress(ctx, "app", netip.MustParseAddr(held[0]), "a"); err != nil {
		t.Fatal(err)
	}
	held = held[1:]
	resp, err := s.cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan EndpointEvent, 8)
	go s.watchLoop(wctx, "app", rev+1, ch) // as if the watcher had been away since rev
	e := nextEvent(t, ch)
	if e.Type != EventReset || !slices.Equal(ips(e.Adverts), held) {
		t.Fatalf("after compaction: %v %+v, want a reset with %v", e.Type, e.Adverts, held)
	}
	// And it goes on watching from the relist's revision.
	a, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("b"))
	if err != nil {
		t.Fatal(err)
	}
	if e := nextEvent(t, ch); e.Type != EventPut || e.Adverts[0].IP != a {
		t.Errorf("after the relist: %v %+v, want put %s", e.Type, e.Adverts, a)
	}
}

// TestStoreHung: with etcd stopped (SIGSTOP: connections open, nothing
// answers) every call fails within its bound, naming the store; after
// SIGCONT calls work again and a watch resumes without losing an event.
func TestStoreHung(t *testing.T) {
	srv := startOwnEtcd(t)
	const bound = time.Second
	s := newStore(t, srv, func(c *Config) { c.RequestTimeout = bound })
	ctx := ctxT(t)
	app := spec("app", "10.77.0.0/24", "10.77.0.1")
	if _, err := s.CreateOrJoinNetwork(ctx, app, "a"); err != nil {
		t.Fatal(err)
	}
	held, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("a"))
	if err != nil {
		t.Fatal(err)
	}
	ch := s.WatchEndpoints(ctx, "app")
	nextEvent(t, ch)
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })
	calls := []struct {
		name string
		call func() error
	}{
		{"create", func() error {
			_, err := s.CreateOrJoinNetwork(ctx, spec("db", "10.78.0.0/24", "10.78.0.1"), "a")
			return err
		}},
		{"join", func() error { _, err := s.CreateOrJoinNetwork(ctx, app, "b"); return err }},
		{"claim", func() error { _, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("a")); return err }},
		{"release", func() error { return s.ReleaseAddress(ctx, "app", held, "a") }},
		{"leave", func() error { _, err := s.LeaveNetwork(ctx, "app", "a"); return err }},
		{"register", func() error { _, err := s.RegisterHost(ctx, host("a", "198.19.77.1")); return err }},
		{"hosts", func() error { _, err := s.Hosts(ctx); return err }},
		{"free", func() error { _, err := s.FreeDeadHost(ctx, "b"); return err }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			err := c.call()
			took := time.Since(start)
			if err == nil {
				t.Fatal("succeeded against a stopped etcd")
			}
			if !strings.Contains(err.Error(), "cluster store etcd at "+srv.Endpoint) {
				t.Errorf("error does not name the store: %v", err)
			}
			if took > bound+500*time.Millisecond {
				t.Errorf("took %s, bound %s", took, bound)
			}
			t.Logf("%s after %s: %v", c.name, took.Round(time.Millisecond), err)
		})
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	b, err := s.ClaimAddress(ctx, "app", netip.Addr{}, advert("b"))
	if err != nil {
		t.Fatalf("claim after SIGCONT: %v", err)
	}
	if e := nextEvent(t, ch); e.Type != EventPut || e.Adverts[0].IP != b {
		t.Errorf("watch after SIGCONT: %v %+v, want put %s", e.Type, e.Adverts, b)
	}
}
