package peers

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/model"
)

// fakeStore hands each network's watch a channel the test feeds.
type fakeStore struct {
	mu      sync.Mutex
	watches map[string]chan cluster.EndpointEvent
	hosts   []cluster.HostStatus
	freed   []string
	claims  []model.EndpointAdvert // ClaimAddress calls
	claimFn func(model.EndpointAdvert) error
	hostErr error
}

func newFakeStore() *fakeStore {
	return &fakeStore{watches: map[string]chan cluster.EndpointEvent{}}
}

func (s *fakeStore) feed(name string) chan cluster.EndpointEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.watches[name]
	if !ok {
		ch = make(chan cluster.EndpointEvent)
		s.watches[name] = ch
	}
	return ch
}

// WatchEndpoints forwards the test's events until ctx ends, then closes,
// as the store does.
func (s *fakeStore) WatchEndpoints(ctx context.Context, name string) <-chan cluster.EndpointEvent {
	in := s.feed(name)
	out := make(chan cluster.EndpointEvent)
	go func() {
		defer close(out)
		for {
			select {
			case e := <-in:
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func (s *fakeStore) Hosts(context.Context) ([]cluster.HostStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hosts), s.hostErr
}

func (s *fakeStore) FreeDeadHost(_ context.Context, id string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.freed = append(s.freed, id)
	return 1, nil
}

func (s *fakeStore) ClaimAddress(_ context.Context, _ string, want netip.Addr, adv model.EndpointAdvert) (netip.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	adv.IP = want
	s.claims = append(s.claims, adv)
	if s.claimFn != nil {
		return want, s.claimFn(adv)
	}
	return want, nil
}

func (s *fakeStore) Network(_ context.Context, name string) (model.ClusterNetwork, error) {
	return model.ClusterNetwork{Spec: model.ClusterSpec{Name: name}, Members: []string{"a", "b"}}, nil
}

// fakeDataplane keeps each VXLAN device's entries as the kernel would.
type fakeDataplane struct {
	mu      sync.Mutex
	neigh   map[uint32]map[netip.Addr]string // VNI -> IP -> MAC
	fdb     map[uint32]map[string]netip.Addr // VNI -> MAC -> VTEP
	syncs   int
	filter  []netip.Addr
	filters int
	removes int // RemoveVTEPFilter calls
	fail    error
}

func newFakeDataplane() *fakeDataplane {
	return &fakeDataplane{neigh: map[uint32]map[netip.Addr]string{}, fdb: map[uint32]map[string]netip.Addr{}}
}

func (d *fakeDataplane) dev(vni uint32) (map[netip.Addr]string, map[string]netip.Addr) {
	if d.neigh[vni] == nil {
		d.neigh[vni], d.fdb[vni] = map[netip.Addr]string{}, map[string]netip.Addr{}
	}
	return d.neigh[vni], d.fdb[vni]
}

func (d *fakeDataplane) SyncPeers(_ context.Context, _ model.Network, vni uint32, want []model.VXLANPeer) (int, int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.syncs++
	if d.fail != nil {
		return 0, 0, d.fail
	}
	neigh, fdb := d.dev(vni)
	wn, wf := map[netip.Addr]string{}, map[string]netip.Addr{}
	for _, p := range want {
		wn[p.IP], wf[p.MAC.String()] = p.MAC.String(), p.VTEP
	}
	changed := 0
	for ip, mac := range wn {
		if neigh[ip] != mac {
			changed++
		}
	}
	for ip := range neigh {
		if _, ok := wn[ip]; !ok {
			changed++
		}
	}
	d.neigh[vni], d.fdb[vni] = wn, wf
	_ = fdb
	return changed, 0, nil
}

func (d *fakeDataplane) EnsurePeer(_ context.Context, _ model.Network, vni uint32, p model.VXLANPeer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	neigh, fdb := d.dev(vni)
	neigh[p.IP], fdb[p.MAC.String()] = p.MAC.String(), p.VTEP
	return nil
}

func (d *fakeDataplane) RemovePeer(_ context.Context, _ model.Network, vni uint32, p model.VXLANPeer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	neigh, fdb := d.dev(vni)
	if neigh[p.IP] == p.MAC.String() {
		delete(neigh, p.IP)
	}
	for _, m := range neigh {
		if m == p.MAC.String() {
			return nil
		}
	}
	delete(fdb, p.MAC.String())
	return nil
}

func (d *fakeDataplane) SyncVTEPFilter(_ context.Context, _ int, vteps []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.filter, d.filters = slices.Clone(vteps), d.filters+1
	return nil
}

func (d *fakeDataplane) RemoveVTEPFilter(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.filter, d.removes = nil, d.removes+1
	return nil
}

// entries renders a device's entries as "IP MAC VTEP" lines, sorted.
func (d *fakeDataplane) entries(vni uint32) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for ip, mac := range d.neigh[vni] {
		out = append(out, fmt.Sprintf("%s %s %s", ip, mac, d.fdb[vni][mac]))
	}
	slices.Sort(out)
	return out
}

// fakeLocal is the local copy in memory.
type fakeLocal struct {
	mu    sync.Mutex
	peers map[string][]model.VXLANPeer
	saves int
}

func newFakeLocal() *fakeLocal { return &fakeLocal{peers: map[string][]model.VXLANPeer{}} }

func (l *fakeLocal) SavePeers(name string, ps []model.VXLANPeer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.peers[name] = slices.Clone(ps)
	l.saves++
	return nil
}

func (l *fakeLocal) LoadPeers(name string) ([]model.VXLANPeer, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps, ok := l.peers[name]
	return slices.Clone(ps), ok, nil
}

func (l *fakeLocal) DeletePeers(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.peers, name)
	return nil
}

func (l *fakeLocal) get(name string) ([]model.VXLANPeer, bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps, ok := l.peers[name]
	return slices.Clone(ps), ok, l.saves
}

type fakeReg struct {
	mu sync.Mutex
	up bool
}

func (r *fakeReg) Up() bool    { r.mu.Lock(); defer r.mu.Unlock(); return r.up }
func (r *fakeReg) set(up bool) { r.mu.Lock(); defer r.mu.Unlock(); r.up = up }

type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) Inc()     { c.mu.Lock(); defer c.mu.Unlock(); c.n++ }
func (c *counter) get() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

// waitFor polls cond: the agent applies events on its own goroutines. The
// deadline is functional (something is stuck), not a speed assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
