package driver

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// Each refused cluster create answers with what was wrong and how to fix
// it, and leaves nothing on the host, nor a membership in the store.
func TestClusterCreateRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(*clusterHost)
		mod    func(*NetworkConfig)
		subnet string
		want   string
	}{
		{name: "no cluster mode", setup: func(h *clusterHost) { h.d.cfg.Cluster = nil }, want: "start mynet serve with --cluster-store"},
		{name: "IPv6", mod: func(c *NetworkConfig) { c.EnableIPv6 = true }, want: "IPv4 only"},
		{name: "two subnets", mod: func(c *NetworkConfig) {
			c.IPv4 = append(c.IPv4, SubnetConfig{Pool: netip.MustParsePrefix("10.78.0.0/24")})
		}, want: "exactly one"},
		{name: "other IPAM", mod: func(c *NetworkConfig) {
			c.IPv4 = []SubnetConfig{{Pool: netip.MustParsePrefix("10.79.0.0/24")}}
		}, want: "--ipam-driver mynet"},
		{name: "MTU above the underlay's", mod: func(c *NetworkConfig) { c.MTU = 1500 }, want: "1450 or less"},
		{name: "spec differs", subnet: "10.77.0.0/25", want: "subnet: 10.77.0.0/24 in the cluster, 10.77.0.0/25 here"},
		{name: "store down", setup: func(h *clusterHost) { h.store.set(true, false) }, want: "cluster store etcd at"},
		{name: "store hung", setup: func(h *clusterHost) {
			h.store.set(false, true)
			h.d.cfg.Cluster.JoinTimeout = 100 * time.Millisecond
		}, want: "cluster store etcd at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeCluster()
			other := newClusterHost(t, store, "b")
			if err := other.create(t, cnet2, "appnet", "10.77.0.0/24", nil); err != nil {
				t.Fatal(err)
			}
			h := newClusterHost(t, store, "a")
			if tc.setup != nil {
				tc.setup(h)
			}
			subnet := tc.subnet
			if subnet == "" {
				subnet = "10.77.0.0/24"
			}
			err := h.create(t, cnet, "appnet", subnet, tc.mod)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("create = %v, want an error containing %q", err, tc.want)
			}
			h.leftNothing(t)
			store.set(false, false)
			if n := store.networks["appnet"]; !reflect.DeepEqual(n.Members, []string{"b"}) {
				t.Errorf("members after the refused create: %v, want [b]", n.Members)
			}
		})
	}
}

// A create joins the store's network, records its VNI, builds the VXLAN
// device and hands the network to the peers; a delete undoes all of it,
// and the last host's leave removes the network from the store.
func TestClusterCreateDelete(t *testing.T) {
	store := newFakeCluster()
	a, b := newClusterHost(t, store, "a"), newClusterHost(t, store, "b")
	for _, h := range []*clusterHost{a, b} {
		if err := h.create(t, cnet, "appnet", "10.77.0.0/24", nil); err != nil {
			t.Fatal(err)
		}
		rec := h.d.networks[cnet]
		if rec.Cluster != "appnet" || rec.VNI != 4096 || rec.MTU != 1450 {
			t.Errorf("record %+v: want cluster appnet, VNI 4096, MTU 1450", rec)
		}
		want := model.VXLAN{VNI: 4096, Local: testVTEP, Port: model.DefaultVXLANPort, UnderlayMTU: 1500}
		if vx := h.dp.VXLANs[cnet]; vx != want {
			t.Errorf("VXLAN %+v, want %+v", vx, want)
		}
		if vx, ok := h.peers.has("appnet"); !ok || vx != want {
			t.Errorf("peers got %+v, %v", vx, ok)
		}
		snap, _ := h.st.Load()
		if snap.Networks[0].VNI != 4096 {
			t.Errorf("stored record %+v lacks the VNI", snap.Networks[0])
		}
	}
	// A retry of the same create is done already: no second join.
	store.takeWrites()
	if err := a.d.CreateNetwork(context.Background(), clusterNetwork(cnet, "appnet", "10.77.0.0/24", netip.MustParsePrefix("10.77.0.1/24"))); err != nil {
		t.Fatal(err)
	}
	if w := store.takeWrites(); len(w) != 0 {
		t.Errorf("a repeated create wrote %v", w)
	}
	for i, h := range []*clusterHost{a, b} {
		if err := h.d.DeleteNetwork(context.Background(), cnet); err != nil {
			t.Fatal(err)
		}
		if _, ok := h.peers.has("appnet"); ok || len(h.dp.VXLANs)+len(h.dp.Networks) != 0 {
			t.Errorf("host %d: peers or devices left after delete: %v %v", i, h.dp.VXLANs, h.dp.Networks)
		}
	}
	if len(store.networks) != 0 {
		t.Errorf("store still has %v after the last host left", store.networks)
	}
}

// A failed build after the join leaves the cluster network again.
func TestClusterCreateRollsBackJoin(t *testing.T) {
	store := newFakeCluster()
	h := newClusterHost(t, store, "a")
	pool, _ := h.d.RequestPool(context.Background(), PoolRequest{Subnet: netip.MustParsePrefix("10.77.0.0/24")})
	h.dp.FailNext = errors.New("injected failure")
	cfg := NetworkConfig{ID: cnet, BridgeName: "mn-111111111111", ICC: true, EnableIPv4: true, Cluster: "appnet",
		IPv4: []SubnetConfig{{Pool: netip.MustParsePrefix(pool), Gateway: netip.MustParsePrefix("10.77.0.1/24")}}}
	if err := h.d.CreateNetwork(context.Background(), cfg); err == nil {
		t.Fatal("create succeeded despite the dataplane's failure")
	}
	h.leftNothing(t)
	if len(store.networks) != 0 {
		t.Errorf("store still has %v after the failed create", store.networks)
	}
}

// Addresses of a cluster network are claimed in the store (one write per
// address, with the MAC the engine asked with), the gateway and the
// addresses of single-host pools never; an endpoint whose MAC differs
// from the claimed one publishes it with a second write.
func TestClusterClaims(t *testing.T) {
	ctx := context.Background()
	store := newFakeCluster()
	h := newClusterHost(t, store, "a")
	single, _ := h.d.RequestPool(ctx, PoolRequest{Subnet: netip.MustParsePrefix("10.90.0.0/24")})
	if err := h.create(t, cnet, "appnet", "10.77.0.0/24", nil); err != nil {
		t.Fatal(err)
	}
	store.takeWrites()
	const engineMAC = "02:aa:00:00:00:01"
	for _, tc := range []struct {
		name   string
		req    AddressRequest
		iface  func(netip.Prefix) Interface
		writes []string
	}{
		{name: "single-host pool", req: AddressRequest{PoolID: single}},
		{name: "next free, engine MAC", req: AddressRequest{PoolID: "10.77.0.0/24", Owner: engineMAC},
			iface:  func(a netip.Prefix) Interface { return Interface{Address: a.String(), MacAddress: engineMAC} },
			writes: []string{"claim 10.77.0.2 " + engineMAC}},
		{name: "given address, user MAC", req: AddressRequest{PoolID: "10.77.0.0/24", Address: netip.MustParseAddr("10.77.0.9")},
			iface:  func(a netip.Prefix) Interface { return Interface{Address: a.String(), MacAddress: "02:bb:00:00:00:01"} },
			writes: []string{"claim 10.77.0.9 02:42:0a:4d:00:09", "claim 10.77.0.9 02:bb:00:00:00:01"}},
		{name: "no MAC at all", req: AddressRequest{PoolID: "10.77.0.0/24"},
			iface:  func(a netip.Prefix) Interface { return Interface{Address: a.String()} },
			writes: []string{"claim 10.77.0.3 ", "claim 10.77.0.3 02:42:0a:4d:00:03"}},
	} {
		a, err := h.d.RequestAddress(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.iface != nil {
			id := strings.Repeat(a.Addr().String()[len(a.Addr().String())-1:], 64)
			if _, err := h.d.CreateEndpoint(ctx, cnet, id, tc.iface(a)); err != nil {
				t.Fatalf("%s: create endpoint: %v", tc.name, err)
			}
		}
		if w := store.takeWrites(); !reflect.DeepEqual(w, tc.writes) {
			t.Errorf("%s: store writes %q, want %q", tc.name, w, tc.writes)
		}
	}
	claims := h.d.ClusterClaims()["appnet"]
	var got []string
	for _, c := range claims {
		got = append(got, c.IP.String()+" "+c.MAC)
	}
	want := []string{"10.77.0.2 " + engineMAC, "10.77.0.3 02:42:0a:4d:00:03", "10.77.0.9 02:bb:00:00:00:01"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterClaims %q, want %q", got, want)
	}
	// Another host holds an address: refused, nothing taken here.
	store.claims["appnet"][netip.MustParseAddr("10.77.0.20")] = model.EndpointAdvert{Host: "b"}
	if _, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24", Address: netip.MustParseAddr("10.77.0.20")}); err == nil {
		t.Error("an address another host holds was handed out")
	}
	if h.d.pools["10.77.0.0/24"].InUse(netip.MustParseAddr("10.77.0.20")) {
		t.Error("a refused claim stays taken in the local pool")
	}
}

// The exhaustion error says which network, how many addresses and hosts.
func TestClusterExhausted(t *testing.T) {
	ctx := context.Background()
	store := newFakeCluster()
	a, b := newClusterHost(t, store, "a"), newClusterHost(t, store, "b")
	for _, h := range []*clusterHost{a, b} {
		if err := h.create(t, cnet, "appnet", "10.77.0.0/29", nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 { // .2 to .6: .1 is the gateway
		h := []*clusterHost{a, b}[i%2]
		if _, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/29"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/29"})
	want := "no free address in cluster network appnet (10.77.0.0/29): 5 addresses in use across 2 hosts"
	if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, ErrBadRequest) {
		t.Fatalf("RequestAddress = %v, want a bad request containing %q", err, want)
	}
}

// With the store down, releases and the delete's leave succeed locally
// and wait in the queue; later ones queue behind them without trying the
// store; the replay makes them in order once it answers, except a release
// of an address claimed again meanwhile.
func TestClusterDeleteQueue(t *testing.T) {
	ctx := context.Background()
	store := newFakeCluster()
	h := newClusterHost(t, store, "a")
	if err := h.create(t, cnet, "appnet", "10.77.0.0/24", nil); err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Prefix
	for range 3 {
		a, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24"})
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a)
	}
	store.takeWrites()
	store.set(true, false)
	for _, a := range addrs[:2] {
		if err := h.d.ReleaseAddress(ctx, "10.77.0.0/24", a.Addr()); err != nil {
			t.Fatalf("release with the store down: %v", err)
		}
	}
	if h.d.pools["10.77.0.0/24"].InUse(addrs[0].Addr()) {
		t.Error("the address is still taken locally")
	}
	store.set(false, false)
	// Claimed again while its release waits: the release must not undo it.
	if _, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24", Address: addrs[1].Addr()}); err != nil {
		t.Fatal(err)
	}
	store.takeWrites()
	if err := h.d.ReleaseAddress(ctx, "10.77.0.0/24", addrs[2].Addr()); err != nil {
		t.Fatal(err)
	}
	if err := h.d.DeleteNetwork(ctx, cnet); err != nil {
		t.Fatal(err)
	}
	if w := store.takeWrites(); len(w) != 0 {
		t.Errorf("writes behind a waiting queue went to the store: %q", w)
	}
	queued, _ := h.st.ClusterDeletes()
	if len(queued) != 4 {
		t.Fatalf("queue %+v, want 3 releases and a leave", queued)
	}
	// The network is gone locally, so the re-claimed address is no longer
	// held either: every queued delete is made, in order.
	if err := h.d.ReplayClusterQueue(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"release " + addrs[0].Addr().String(), "release " + addrs[1].Addr().String(), "release " + addrs[2].Addr().String(), "leave appnet a"}
	if w := store.takeWrites(); !reflect.DeepEqual(w, want) {
		t.Errorf("replayed %q, want %q", w, want)
	}
	if q, _ := h.st.ClusterDeletes(); len(q) != 0 || h.d.queue.waiting.Load() {
		t.Errorf("queue after the replay: %+v", q)
	}
}

// A queued release of an address this host claimed again is dropped.
func TestClusterQueueDropsSuperseded(t *testing.T) {
	ctx := context.Background()
	store := newFakeCluster()
	h := newClusterHost(t, store, "a")
	if err := h.create(t, cnet, "appnet", "10.77.0.0/24", nil); err != nil {
		t.Fatal(err)
	}
	a, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	store.set(true, false)
	if err := h.d.ReleaseAddress(ctx, "10.77.0.0/24", a.Addr()); err != nil {
		t.Fatal(err)
	}
	store.set(false, false)
	if _, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24", Address: a.Addr()}); err != nil {
		t.Fatal(err)
	}
	if err := h.d.ReplayClusterQueue(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := store.claims["appnet"][a.Addr()]; !ok {
		t.Error("the replayed release undid the newer claim")
	}
}

// A restart with the store down rebuilds the VXLAN device and hands the
// network to the peers from the local state; the reconcile repairs a
// deleted device.
func TestClusterRestore(t *testing.T) {
	ctx := context.Background()
	store := newFakeCluster()
	h := newClusterHost(t, store, "a")
	if err := h.create(t, cnet, "appnet", "10.77.0.0/24", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	store.set(true, false)
	snap, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := newClusterHost(t, store, "a")
	r.d.cfg.Store, r.st = h.st, h.st
	if err := r.d.RestoreSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if vx := r.dp.VXLANs[cnet]; vx.VNI != 4096 {
		t.Fatalf("restored VXLAN %+v", vx)
	}
	if _, ok := r.peers.has("appnet"); !ok {
		t.Error("restored network not handed to the peers")
	}
	if got := r.d.ClusterClaims()["appnet"]; len(got) != 1 || got[0].IP != netip.MustParseAddr("10.77.0.2") {
		t.Errorf("restored claims %+v", got)
	}
	r.dp.Mu.Lock()
	delete(r.dp.VXLANs, cnet)
	r.dp.Mu.Unlock()
	if repaired, err := r.d.Reconcile(ctx, false); err != nil || !repaired {
		t.Fatalf("Reconcile = %v, %v; want a repair", repaired, err)
	}
	if vx := r.dp.VXLANs[cnet]; vx.VNI != 4096 {
		t.Errorf("VXLAN after the reconcile: %+v", vx)
	}
}

// The queue keeps its entries across a restart.
var _ ClusterQueue = (*state.Store)(nil)

// Deletes left in the queue by an earlier run go first: a release asked
// for while they wait queues behind them (before, it went to the store at
// once, ahead of the older ones).
func TestClusterQueueLeftByEarlierRun(t *testing.T) {
	ctx := context.Background()
	store := newFakeCluster()
	h := newClusterHost(t, store, "a")
	if err := h.create(t, cnet, "appnet", "10.77.0.0/24", nil); err != nil {
		t.Fatal(err)
	}
	a, err := h.d.RequestAddress(ctx, AddressRequest{PoolID: "10.77.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	old := state.ClusterDelete{Op: state.OpRelease, Network: "appnet", Host: "a", Addr: netip.MustParseAddr("10.77.0.40")}
	store.claims["appnet"][old.Addr] = model.EndpointAdvert{Host: "a", IP: old.Addr}
	if _, err := h.st.QueueClusterDelete(old); err != nil {
		t.Fatal(err)
	}
	store.set(true, false)
	if err := h.d.ReplayClusterQueue(ctx); err == nil {
		t.Fatal("replay succeeded with the store down")
	}
	store.set(false, false)
	store.takeWrites()
	if err := h.d.ReleaseAddress(ctx, "10.77.0.0/24", a.Addr()); err != nil {
		t.Fatal(err)
	}
	if w := store.takeWrites(); len(w) != 0 {
		t.Fatalf("a release went ahead of the queue: %q", w)
	}
	if err := h.d.ReplayClusterQueue(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"release 10.77.0.40", "release " + a.Addr().String()}
	if w := store.takeWrites(); !reflect.DeepEqual(w, want) {
		t.Errorf("replayed %q, want %q", w, want)
	}
}
