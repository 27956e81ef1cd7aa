package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/mynet/mynet/internal/driver/drivertest"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/state"
)

// fakeCluster is an in-memory cluster store with etcd's semantics as
// internal/cluster implements them, that can be down (fails at once) or
// hung (answers nothing until the context ends). It logs every write.
type fakeCluster struct {
	mu       sync.Mutex
	networks map[string]model.ClusterNetwork
	claims   map[string]map[netip.Addr]model.EndpointAdvert
	cursor   map[string]netip.Addr
	nextVNI  uint32
	down     bool
	hung     bool
	writes   []string
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{networks: map[string]model.ClusterNetwork{}, claims: map[string]map[netip.Addr]model.EndpointAdvert{},
		cursor: map[string]netip.Addr{}, nextVNI: 4096}
}

var errStoreDown = errors.New("cluster store etcd at 198.19.77.1:2379: no answer (is etcd reachable and running?)")

// enter takes the lock, or fails as the store is.
func (f *fakeCluster) enter(ctx context.Context) error {
	f.mu.Lock()
	if f.hung {
		f.mu.Unlock()
		<-ctx.Done()
		return fmt.Errorf("%w: %w", errStoreDown, ctx.Err())
	}
	if f.down {
		f.mu.Unlock()
		return errStoreDown
	}
	return nil
}

func (f *fakeCluster) set(down, hung bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down, f.hung = down, hung
}

func (f *fakeCluster) CreateOrJoinNetwork(ctx context.Context, spec model.ClusterSpec, host string) (model.ClusterNetwork, error) {
	if err := f.enter(ctx); err != nil {
		return model.ClusterNetwork{}, err
	}
	defer f.mu.Unlock()
	n, ok := f.networks[spec.Name]
	if ok {
		if d := n.Spec.Diff(spec); d != nil {
			return n, fmt.Errorf("cluster network exists with a different spec: %v", d)
		}
		if n.HasMember(host) {
			return n, nil
		}
	} else {
		n = model.ClusterNetwork{Spec: spec, VNI: f.nextVNI}
		f.nextVNI++
	}
	n.Members = append(n.Members, host)
	f.networks[spec.Name] = n
	f.writes = append(f.writes, "join "+spec.Name+" "+host)
	return n, nil
}

func (f *fakeCluster) LeaveNetwork(ctx context.Context, name, host string) (bool, error) {
	if err := f.enter(ctx); err != nil {
		return false, err
	}
	defer f.mu.Unlock()
	n, ok := f.networks[name]
	if !ok || !n.HasMember(host) {
		return false, nil
	}
	n.Members = slices.DeleteFunc(n.Members, func(m string) bool { return m == host })
	f.writes = append(f.writes, "leave "+name+" "+host)
	if len(n.Members) == 0 {
		delete(f.networks, name)
		delete(f.claims, name)
		return true, nil
	}
	f.networks[name] = n
	return false, nil
}

func (f *fakeCluster) ClaimAddress(ctx context.Context, network string, want netip.Addr, adv model.EndpointAdvert) (netip.Addr, error) {
	if err := f.enter(ctx); err != nil {
		return netip.Addr{}, err
	}
	defer f.mu.Unlock()
	n, ok := f.networks[network]
	if !ok {
		return want, fmt.Errorf("cluster network not found: %s", network)
	}
	pool, _ := ipam.NewPool(n.Spec.Subnet, n.Spec.IPRange)
	_ = pool.Reserve(n.Spec.Gateway)
	for a := range f.claims[network] {
		_ = pool.Reserve(a)
	}
	if c, ok := f.cursor[network]; ok {
		pool.SetCursor(c)
	}
	if !want.IsValid() {
		a, err := pool.Allocate()
		if err != nil {
			return a, fmt.Errorf("network %s: %w (claimed cluster-wide)", network, err)
		}
		want = a
		f.cursor[network] = a
	} else if held, ok := f.claims[network][want]; ok && held.Host != adv.Host {
		return want, fmt.Errorf("address claimed: %s is held by host %s", want, held.Host)
	}
	adv.IP = want
	if f.claims[network] == nil {
		f.claims[network] = map[netip.Addr]model.EndpointAdvert{}
	}
	f.claims[network][want] = adv
	f.writes = append(f.writes, "claim "+want.String()+" "+adv.MAC)
	return want, nil
}

func (f *fakeCluster) ReleaseAddress(ctx context.Context, network string, a netip.Addr, host string) error {
	if err := f.enter(ctx); err != nil {
		return err
	}
	defer f.mu.Unlock()
	if held, ok := f.claims[network][a]; ok && held.Host == host {
		delete(f.claims[network], a)
		f.writes = append(f.writes, "release "+a.String())
	}
	return nil
}

func (f *fakeCluster) Claims(ctx context.Context, network string) ([]model.EndpointAdvert, int64, error) {
	if err := f.enter(ctx); err != nil {
		return nil, 0, err
	}
	defer f.mu.Unlock()
	var out []model.EndpointAdvert
	for _, c := range f.claims[network] {
		out = append(out, c)
	}
	return out, 1, nil
}

// takeWrites returns the writes since the last call.
func (f *fakeCluster) takeWrites() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.writes
	f.writes = nil
	return w
}

// fakePeers records what the driver handed to the peers agent.
type fakePeers struct {
	mu       sync.Mutex
	networks map[string]model.VXLAN
}

func (p *fakePeers) AddNetwork(_ model.Network, vx model.VXLAN, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.networks[name] = vx
}

func (p *fakePeers) RemoveNetwork(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.networks, name)
}

func (p *fakePeers) has(name string) (model.VXLAN, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	vx, ok := p.networks[name]
	return vx, ok
}

// clusterHost is a driver in cluster mode over the fakes and a real state
// file.
type clusterHost struct {
	d     *Driver
	store *fakeCluster
	peers *fakePeers
	dp    *drivertest.Dataplane
	st    *state.Store
}

const (
	cnet  = "1111111111111111111111111111111111111111111111111111111111111111"
	cnet2 = "3333333333333333333333333333333333333333333333333333333333333333"
	cep   = "2222222222222222222222222222222222222222222222222222222222222222"
)

var testVTEP = netip.MustParseAddr("198.19.77.10")

func newClusterHost(t *testing.T, store *fakeCluster, host string) *clusterHost {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &clusterHost{store: store, peers: &fakePeers{networks: map[string]model.VXLAN{}}, dp: drivertest.New(), st: st}
	h.d = New(Config{Store: st, Dataplane: h.dp, Cluster: &ClusterConfig{
		Store: store, Peers: h.peers, HostID: host, Queue: st,
		VXLAN: model.VXLAN{Local: testVTEP, Port: model.DefaultVXLANPort, UnderlayMTU: 1500},
	}})
	return h
}

// create runs the engine's calls of a cluster network create: pool,
// gateway, CreateNetwork.
func (h *clusterHost) create(t *testing.T, id, name, subnet string, mod func(*NetworkConfig)) error {
	t.Helper()
	ctx := context.Background()
	pool, err := h.d.RequestPool(ctx, PoolRequest{Subnet: netip.MustParsePrefix(subnet)})
	if err != nil {
		return err
	}
	gw, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: pool, Gateway: true})
	if err != nil {
		return err
	}
	cfg := clusterNetwork(id, name, pool, gw)
	if mod != nil {
		mod(&cfg)
	}
	return h.d.CreateNetwork(ctx, cfg)
}

// clusterNetwork is CreateNetwork's request for a cluster network.
func clusterNetwork(id, name, pool string, gw netip.Prefix) NetworkConfig {
	return NetworkConfig{ID: id, BridgeName: "mn-" + id[:12], ICC: true, Masquerade: true, AntiSpoofing: true, EnableIPv4: true,
		IPv4: []SubnetConfig{{Pool: netip.MustParsePrefix(pool), Gateway: gw}}, Cluster: name}
}

// leftNothing checks that a failed create left nothing on the host.
func (h *clusterHost) leftNothing(t *testing.T) {
	t.Helper()
	h.dp.Mu.Lock()
	defer h.dp.Mu.Unlock()
	if len(h.dp.Networks)+len(h.dp.VXLANs) != 0 {
		t.Errorf("kernel objects left: networks %v, VXLANs %v", h.dp.Networks, h.dp.VXLANs)
	}
	snap, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Networks) != 0 || len(h.d.networks) != 0 {
		t.Errorf("network records left: %+v", snap.Networks)
	}
}
