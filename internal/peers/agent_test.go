package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/model"
)

const vni = 4096

var (
	vtepA = netip.MustParseAddr("198.19.77.1") // this host
	vtepB = netip.MustParseAddr("198.19.77.2")
	vtepC = netip.MustParseAddr("198.19.77.3")
)

type env struct {
	a   *Agent
	st  *fakeStore
	dp  *fakeDataplane
	lc  *fakeLocal
	reg *fakeReg
	rep *counter
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	e := &env{st: newFakeStore(), dp: newFakeDataplane(), lc: newFakeLocal(), reg: &fakeReg{up: true}, rep: &counter{}}
	cfg := Config{
		Store: e.st, Dataplane: e.dp, Local: e.lc, HostID: "a", Registration: e.reg,
		Metrics: Metrics{Repairs: e.rep}, Interval: time.Hour, SaveDelay: time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	e.a = New(cfg)
	t.Cleanup(e.a.shutdown)
	return e
}

func (e *env) add() {
	e.a.AddNetwork(model.Network{ID: "n1234567890abcdef"}, model.VXLAN{VNI: vni, Local: vtepA}, "appnet")
}

func adv(host, ip string, vtep netip.Addr) model.EndpointAdvert {
	a := netip.MustParseAddr(ip).As4()
	mac := ""
	if host != "" {
		mac = net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}.String()
	}
	return model.EndpointAdvert{Host: host, IP: netip.MustParseAddr(ip), MAC: mac, VTEP: vtep}
}

func entry(ip string, vtep netip.Addr) string {
	return adv("x", ip, vtep).IP.String() + " " + adv("x", ip, vtep).MAC + " " + vtep.String()
}

func TestWatchKeepsEntries(t *testing.T) {
	e := newEnv(t, nil)
	e.add()
	feed := e.st.feed("appnet")
	noMAC := adv("b", "10.77.0.9", vtepB)
	noMAC.MAC = ""
	moved := adv("c", "10.77.0.3", vtepC)
	moved.MAC = "02:42:0a:4d:00:63"
	steps := []struct {
		name string
		ev   cluster.EndpointEvent
		want []string
	}{
		{"reset keeps only remote adverts with a MAC",
			cluster.EndpointEvent{Type: cluster.EventReset, Adverts: []model.EndpointAdvert{
				adv("a", "10.77.0.2", vtepA), adv("b", "10.77.0.3", vtepB), noMAC}},
			[]string{entry("10.77.0.3", vtepB)}},
		{"put of another host's endpoint",
			cluster.EndpointEvent{Type: cluster.EventPut, Adverts: []model.EndpointAdvert{adv("c", "10.77.0.4", vtepC)}},
			[]string{entry("10.77.0.3", vtepB), entry("10.77.0.4", vtepC)}},
		{"a MAC learned later adds the entry",
			cluster.EndpointEvent{Type: cluster.EventPut, Adverts: []model.EndpointAdvert{adv("b", "10.77.0.9", vtepB)}},
			[]string{entry("10.77.0.3", vtepB), entry("10.77.0.4", vtepC), entry("10.77.0.9", vtepB)}},
		{"an address given to another host's endpoint replaces the entries",
			cluster.EndpointEvent{Type: cluster.EventPut, Adverts: []model.EndpointAdvert{moved}},
			[]string{"10.77.0.3 02:42:0a:4d:00:63 198.19.77.3", entry("10.77.0.4", vtepC), entry("10.77.0.9", vtepB)}},
		{"an address that became this host's drops the entry",
			cluster.EndpointEvent{Type: cluster.EventPut, Adverts: []model.EndpointAdvert{adv("a", "10.77.0.9", vtepA)}},
			[]string{"10.77.0.3 02:42:0a:4d:00:63 198.19.77.3", entry("10.77.0.4", vtepC)}},
		{"delete",
			cluster.EndpointEvent{Type: cluster.EventDelete, Adverts: []model.EndpointAdvert{{IP: netip.MustParseAddr("10.77.0.4")}}},
			[]string{"10.77.0.3 02:42:0a:4d:00:63 198.19.77.3"}},
		{"relist drops what is gone",
			cluster.EndpointEvent{Type: cluster.EventReset, Adverts: []model.EndpointAdvert{adv("b", "10.77.0.5", vtepB)}},
			[]string{entry("10.77.0.5", vtepB)}},
	}
	for _, s := range steps {
		feed <- s.ev
		waitFor(t, s.name, func() bool { return slices.Equal(e.dp.entries(vni), s.want) })
	}
	// The stale FDB entry of the moved address's old MAC went too.
	e.dp.mu.Lock()
	fdb := len(e.dp.fdb[vni])
	e.dp.mu.Unlock()
	if fdb != 1 {
		t.Errorf("%d FDB entries left, want 1", fdb)
	}
	waitFor(t, "the local copy saved", func() bool {
		ps, ok, _ := e.lc.get("appnet")
		return ok && len(ps) == 1 && ps[0].IP == netip.MustParseAddr("10.77.0.5")
	})
	st := e.a.Status()
	if len(st.Networks) != 1 || len(st.Networks[0].Peers) != 1 || st.Networks[0].Peers[0].Host != "b" || st.Networks[0].FDBEntries != 1 {
		t.Errorf("status %+v", st.Networks)
	}
}

func TestLocalCopyFirst(t *testing.T) {
	b := adv("b", "10.77.0.3", vtepB)
	mac, _ := net.ParseMAC(b.MAC)
	saved := []model.VXLANPeer{{IP: b.IP, MAC: mac, VTEP: vtepB}}
	tests := []struct {
		name      string
		copy      []model.VXLANPeer // nil: none saved
		preset    bool              // the device has an entry from before the restart
		wantSyncs int
		want      []string
	}{
		{"programs the copy with the store silent", saved, false, 1, []string{entry("10.77.0.3", vtepB)}},
		{"the copy replaces stale entries", saved, true, 1, []string{entry("10.77.0.3", vtepB)}},
		{"no copy: entries from before stay until the store lists", nil, true, 0, []string{entry("10.77.0.8", vtepC)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if tt.copy != nil {
				_ = e.lc.SavePeers("appnet", tt.copy)
			}
			if tt.preset {
				p := adv("c", "10.77.0.8", vtepC)
				m, _ := net.ParseMAC(p.MAC)
				_ = e.dp.EnsurePeer(context.Background(), model.Network{}, vni, model.VXLANPeer{IP: p.IP, MAC: m, VTEP: vtepC})
			}
			e.add() // the fake store sends nothing: etcd is down
			waitFor(t, "programmed", func() bool {
				e.dp.mu.Lock()
				defer e.dp.mu.Unlock()
				return e.dp.syncs == tt.wantSyncs
			})
			e.a.RemoveNetwork("appnet") // waits for the watch: no sync can follow
			if got := e.dp.entries(vni); !slices.Equal(got, tt.want) {
				t.Errorf("entries %v, want %v", got, tt.want)
			}
			if _, ok, _ := e.lc.get("appnet"); ok {
				t.Error("RemoveNetwork left the local copy")
			}
		})
	}
}

// A burst of claims is saved once, not once per event.
func TestSaveCoalesced(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SaveDelay = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.a.Run(ctx); close(done) }()
	e.add()
	feed := e.st.feed("appnet")
	feed <- cluster.EndpointEvent{Type: cluster.EventReset}
	for i := range 100 {
		feed <- cluster.EndpointEvent{Type: cluster.EventPut, Adverts: []model.EndpointAdvert{adv("b", fmt.Sprintf("10.77.1.%d", i+1), vtepB)}}
	}
	waitFor(t, "100 entries", func() bool { return len(e.dp.entries(vni)) == 100 })
	if _, _, saves := e.lc.get("appnet"); saves != 0 {
		t.Errorf("%d saves before the delay ended, want 0", saves)
	}
	cancel() // stopping writes what is pending
	<-done
	ps, ok, saves := e.lc.get("appnet")
	if !ok || len(ps) != 100 || saves != 1 {
		t.Errorf("after stop: %d peers saved (found %v) in %d saves; want 100 in 1", len(ps), ok, saves)
	}
}

func TestResyncRepairs(t *testing.T) {
	e := newEnv(t, nil)
	e.add()
	e.st.feed("appnet") <- cluster.EndpointEvent{Type: cluster.EventReset, Adverts: []model.EndpointAdvert{adv("b", "10.77.0.3", vtepB)}}
	waitFor(t, "programmed", func() bool { return len(e.dp.entries(vni)) == 1 })
	ctx := context.Background()
	e.a.resyncAll(ctx)
	if n := e.rep.get(); n != 0 {
		t.Fatalf("a resync of intact entries counted %d repairs", n)
	}
	e.dp.mu.Lock()
	clear(e.dp.neigh[vni]) // ip neigh flush by hand
	e.dp.mu.Unlock()
	e.a.resyncAll(ctx)
	if got := e.dp.entries(vni); len(got) != 1 || e.rep.get() != 1 {
		t.Errorf("after resync: entries %v, repairs %d; want the entry back and 1 repair", got, e.rep.get())
	}
}

func TestResyncRetriesFailedWrites(t *testing.T) {
	e := newEnv(t, nil)
	e.add()
	e.dp.mu.Lock()
	e.dp.fail = errors.New("no such device")
	e.dp.mu.Unlock()
	e.st.feed("appnet") <- cluster.EndpointEvent{Type: cluster.EventReset, Adverts: []model.EndpointAdvert{adv("b", "10.77.0.3", vtepB)}}
	waitFor(t, "the failure recorded", func() bool {
		st := e.a.Status()
		return len(st.Networks) == 1 && st.Networks[0].LastError != ""
	})
	e.dp.mu.Lock()
	e.dp.fail = nil
	e.dp.mu.Unlock()
	e.a.resyncAll(context.Background())
	if got := e.dp.entries(vni); len(got) != 1 || e.a.Status().Networks[0].LastError != "" {
		t.Errorf("after resync: %v, %+v", got, e.a.Status().Networks[0])
	}
	if e.rep.get() != 0 {
		t.Error("a retried write counted as a repair of an outside change")
	}
}

func TestVTEPFilter(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.st.hosts = []cluster.HostStatus{
		{ClusterHost: model.ClusterHost{ID: "a", VTEP: vtepA}, Alive: true},
		{ClusterHost: model.ClusterHost{ID: "b", VTEP: vtepB}, Alive: false}, // cut off, not freed
	}
	e.a.syncFilter(ctx, false)
	if e.dp.removes != 1 || e.dp.filters != 0 {
		t.Errorf("no network at start: %d removes, %d syncs; want a leftover filter removed", e.dp.removes, e.dp.filters)
	}
	e.a.janitor(ctx)
	e.add()
	e.st.feed("appnet") <- cluster.EndpointEvent{Type: cluster.EventReset, Adverts: []model.EndpointAdvert{adv("c", "10.77.0.3", vtepC)}}
	waitFor(t, "programmed", func() bool { return len(e.dp.entries(vni)) == 1 })
	e.a.syncFilter(ctx, false)
	if want := []netip.Addr{vtepB, vtepC}; !slices.Equal(e.dp.filter, want) {
		t.Errorf("filter %v, want %v (registered hosts and peers, not this host)", e.dp.filter, want)
	}
	syncs := e.dp.filters
	e.a.syncFilter(ctx, false)
	if e.dp.filters != syncs {
		t.Error("an unchanged set was synced again without force")
	}
	e.a.RemoveNetwork("appnet")
	e.a.syncFilter(ctx, false)
	if e.dp.filter != nil || e.dp.removes != 2 {
		t.Errorf("after the last network: filter %v, %d removes", e.dp.filter, e.dp.removes)
	}
}

func TestJanitor(t *testing.T) {
	host := func(id string, alive bool) cluster.HostStatus {
		return cluster.HostStatus{ClusterHost: model.ClusterHost{ID: id, VTEP: vtepB}, Alive: alive}
	}
	tests := []struct {
		name  string
		grace time.Duration
		first []cluster.HostStatus // listed on the first pass
		then  []cluster.HostStatus // on the second, after the grace
		want  []string
	}{
		{"alive host stays", time.Nanosecond, []cluster.HostStatus{host("b", true)}, []cluster.HostStatus{host("b", true)}, nil},
		{"dead past the grace is freed", time.Nanosecond, []cluster.HostStatus{host("b", false)}, []cluster.HostStatus{host("b", false)}, []string{"b"}},
		{"dead within the grace stays", time.Hour, []cluster.HostStatus{host("b", false)}, []cluster.HostStatus{host("b", false)}, nil},
		{"back in between: the wait starts again", time.Nanosecond, []cluster.HostStatus{host("b", false)}, []cluster.HostStatus{host("b", true)}, nil},
		{"this host is never freed", time.Nanosecond, []cluster.HostStatus{host("a", false)}, []cluster.HostStatus{host("a", false)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.DeadGrace = tt.grace })
			ctx := context.Background()
			e.st.hosts = tt.first
			e.a.janitor(ctx) // first seen dead: the grace starts
			if len(e.st.freed) != 0 {
				t.Fatalf("freed %v on first sight", e.st.freed)
			}
			time.Sleep(time.Millisecond) // past a 1 ns grace
			e.st.hosts = tt.then
			e.a.janitor(ctx)
			if !slices.Equal(e.st.freed, tt.want) {
				t.Errorf("freed %v, want %v", e.st.freed, tt.want)
			}
		})
	}
}

func TestDegradedReassert(t *testing.T) {
	e := newEnv(t, nil)
	mine := []model.EndpointAdvert{adv("a", "10.77.0.2", vtepA), adv("a", "10.77.0.7", vtepA)}
	e.a.cfg.LocalClaims = func() map[string][]model.EndpointAdvert { return map[string][]model.EndpointAdvert{"appnet": mine} }
	storeDown := errors.New("context deadline exceeded")
	e.st.claimFn = func(adv model.EndpointAdvert) error {
		if adv.IP == mine[1].IP {
			return fmt.Errorf("%w: held by host c", cluster.ErrAddressInUse)
		}
		return storeDown
	}
	ctx := context.Background()
	if !e.a.checkStore(ctx) || e.a.Status().Degraded || len(e.st.claims) != 0 {
		t.Fatal("up at start: no re-assertion wanted")
	}
	e.reg.set(false)
	if e.a.checkStore(ctx) || !e.a.Status().Degraded {
		t.Fatal("lease lost but not degraded")
	}
	e.reg.set(true)
	e.a.checkStore(ctx) // the store still fails: retried at the next tick
	if len(e.st.claims) != 1 {
		t.Fatalf("%d claims tried, want 1 (stop at the first store failure)", len(e.st.claims))
	}
	storeDown = nil
	e.a.checkStore(ctx)
	e.a.checkStore(ctx) // done: not again
	st := e.a.Status()
	if len(e.st.claims) != 3 || st.Degraded {
		t.Errorf("%d claims, degraded %v; want 1 failed + 2 and not degraded", len(e.st.claims), st.Degraded)
	}
	for _, c := range e.st.claims {
		if c.Host != "a" || !strings.HasPrefix(c.IP.String(), "10.77.0.") {
			t.Errorf("re-asserted %+v: want this host's held address", c)
		}
	}
	if len(st.Conflicts) != 1 || st.Conflicts[0].IP != mine[1].IP {
		t.Errorf("conflicts %+v, want the one address held by c", st.Conflicts)
	}
}
