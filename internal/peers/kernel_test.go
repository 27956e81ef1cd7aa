package peers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/cluster/etcdtest"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/nstest"
	"github.com/mynet/mynet/state"
)

// kHost is this test's host "a": a throwaway namespace with a bridge
// network and its VXLAN device, a real Dataplane, and the cluster store.
type kHost struct {
	ex  *nsExec
	dp  nsDataplane
	n   model.Network
	vx  model.VXLAN
	reg *switchReg
}

// switchReg is a real registration that the test can also force down, as
// a partition from the store would.
type switchReg struct {
	real *cluster.Registration
	down atomic.Bool
}

func (r *switchReg) Up() bool { return !r.down.Load() && (r.real == nil || r.real.Up()) }

const kVNI = 4321

func newKHost(t *testing.T) *kHost {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommand(t, "iptables")
	ex, err := newNSExec()
	if err != nil {
		t.Fatal(err)
	}
	h := &kHost{ex: ex, vx: model.VXLAN{VNI: kVNI, Local: netip.MustParseAddr("198.19.77.1"), UnderlayMTU: 1500}}
	id := "c2ee" + strings.Repeat("0", 60) // hex, as the engine's IDs and the rules' comments are
	h.n = model.Network{ID: id, Bridge: model.BridgeName(id), MTU: 1450, ICC: true, Masquerade: true,
		IPv4: []model.Subnet{{Pool: netip.MustParsePrefix("10.77.0.0/21"), Gateway: netip.MustParsePrefix("10.77.0.1/21")}}}
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1"},
		{"ip", "addr", "add", "198.19.77.1/24", "dev", "under0"},
		{"ip", "link", "set", "under0", "up"},
	} {
		if _, err := ex.sh(c[0], c[1:]...); err != nil {
			_ = ex.close()
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	err = ex.do(func() error {
		d, err := bridge.New(bridge.Config{Instance: "mynet-test", Firewall: model.FirewallIPTables})
		if err != nil {
			return err
		}
		h.dp = nsDataplane{d: d, ex: ex}
		if err := d.EnsureNetwork(ctx, h.n); err != nil {
			return err
		}
		return d.EnsureVXLAN(ctx, h.n, h.vx)
	})
	if err != nil {
		h.teardown(t)
		t.Fatal(err)
	}
	return h
}

// teardown removes what mynet made and checks that nothing is left, then
// leaves the namespace (which goes with its last reference).
func (h *kHost) teardown(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if h.dp.d != nil {
		err := h.ex.do(func() error {
			err := errors.Join(h.dp.d.RemoveVXLAN(ctx, h.n, kVNI), h.dp.d.RemoveVTEPFilter(ctx), h.dp.d.DeleteNetwork(ctx, h.n))
			h.dp.d.Close()
			return err
		})
		if err != nil {
			t.Error(err)
		}
		links, _ := h.ex.sh("ip", "-br", "link")
		rules, _ := h.ex.sh("iptables-save")
		if strings.Contains(links, "mnx") || strings.Contains(links, h.n.Bridge) || strings.Contains(strings.ToUpper(rules), "MYNET") {
			t.Errorf("left behind in the test namespace:\n%s\n%s", links, rules)
		}
	}
	if err := h.ex.close(); err != nil {
		t.Errorf("restore the namespace: %v", err)
	}
}

// neigh is the device's neighbour entries, as IP -> MAC.
func (h *kHost) neigh(t *testing.T) map[netip.Addr]string {
	t.Helper()
	es, err := h.dp.entries(context.Background(), h.n, kVNI)
	if err != nil {
		t.Fatal(err)
	}
	return es.Neigh
}

func kStore(t *testing.T, srv *etcdtest.Server) *cluster.Store {
	t.Helper()
	s, err := cluster.New(cluster.Config{
		Endpoints: []string{srv.Endpoint}, RequestTimeout: 2 * time.Second, LeaseTTL: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func derivedMAC(a netip.Addr) string {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}.String()
}

type kCluster struct {
	srv      *etcdtest.Server
	stores   map[string]*cluster.Store
	regs     map[string]*cluster.Registration
	vteps    map[string]netip.Addr
	mineMu   chan struct{}
	mine     []model.EndpointAdvert // host a's claims, for re-assertion
	spec     model.ClusterSpec
	agentLog *slog.Logger
}

func newKCluster(t *testing.T) *kCluster {
	t.Helper()
	c := &kCluster{srv: etcdtest.Start(t), stores: map[string]*cluster.Store{}, regs: map[string]*cluster.Registration{},
		vteps: map[string]netip.Addr{}, mineMu: make(chan struct{}, 1),
		spec:     model.ClusterSpec{Name: "appnet", Subnet: netip.MustParsePrefix("10.77.0.0/21"), Gateway: netip.MustParseAddr("10.77.0.1"), ICC: true},
		agentLog: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	ctx := context.Background()
	for i, id := range []string{"a", "b", "c"} {
		s := kStore(t, c.srv)
		c.stores[id], c.vteps[id] = s, netip.AddrFrom4([4]byte{198, 19, 77, byte(i + 1)})
		reg, err := s.RegisterHost(ctx, model.ClusterHost{ID: id, VTEP: c.vteps[id]})
		if err != nil {
			t.Fatal(err)
		}
		c.regs[id] = reg
		t.Cleanup(func() { _ = reg.Close(context.Background()) })
		if _, err := s.CreateOrJoinNetwork(ctx, c.spec, id); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// claim claims an address for host (the next one when a is zero) with the
// MAC derived from it, as the driver does.
func (c *kCluster) claim(t *testing.T, host string, a netip.Addr) netip.Addr {
	t.Helper()
	ctx := context.Background()
	s := c.stores[host]
	adv := model.EndpointAdvert{Host: host, VTEP: c.vteps[host]}
	if !a.IsValid() {
		got, err := s.ClaimAddress(ctx, "appnet", a, adv)
		if err != nil {
			t.Fatal(err)
		}
		a = got
	}
	adv.MAC = derivedMAC(a)
	if _, err := s.ClaimAddress(ctx, "appnet", a, adv); err != nil {
		t.Fatal(err)
	}
	if host == "a" {
		adv.IP = a
		c.mine = append(c.mine, adv)
	}
	return a
}

func (c *kCluster) agent(h *kHost, local LocalCopy) *Agent {
	return New(Config{
		Log: c.agentLog, Store: c.stores["a"], Dataplane: h.dp, Local: local, HostID: "a",
		Port: model.DefaultVXLANPort, Registration: h.reg, DeadGrace: time.Second,
		LocalClaims: func() map[string][]model.EndpointAdvert {
			return map[string][]model.EndpointAdvert{"appnet": slices.Clone(c.mine)}
		},
		Interval: 200 * time.Millisecond,
	})
}

// TestAgentKernel runs the agent of host a against a real etcd and a real
// VXLAN device: hosts b and c are store clients of their own.
func TestAgentKernel(t *testing.T) {
	c := newKCluster(t)
	h := newKHost(t)
	defer h.teardown(t)
	h.reg = &switchReg{real: c.regs["a"]}
	local, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	a := c.agent(h, local)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	stopped := false
	stop := func() {
		if !stopped {
			cancel()
			<-done
			stopped = true
		}
	}
	defer stop()
	a.AddNetwork(h.n, h.vx, "appnet")

	checkClaimLatency(t, c, h)
	checkReleaseAndRepair(t, c, h, a)
	checkFilter(t, c, h)
	checkDeadHost(t, c, h)
	checkReassert(t, c, h, a)
	want := checkScale(t, c, h)
	stop()
	checkRestartStoreDown(t, c, h, local, want)
}

// checkClaimLatency claims on b and measures until a's entry exists.
func checkClaimLatency(t *testing.T, c *kCluster, h *kHost) {
	var lat []time.Duration
	for range 50 {
		start := time.Now()
		ip := c.claim(t, "b", netip.Addr{})
		waitFor(t, "the entry of "+ip.String(), func() bool { return h.neigh(t)[ip] == derivedMAC(ip) })
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("claim on b -> entry on a, 50 claims (two writes each, as a claim then its MAC): p50 %v, p99 %v, max %v",
		lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
}

func checkReleaseAndRepair(t *testing.T, c *kCluster, h *kHost, a *Agent) {
	ctx := context.Background()
	gone := c.claim(t, "b", netip.Addr{})
	waitFor(t, "entry of "+gone.String(), func() bool { return h.neigh(t)[gone] != "" })
	if err := c.stores["b"].ReleaseAddress(ctx, "appnet", gone, "b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "released entry removed", func() bool { _, ok := h.neigh(t)[gone]; return !ok })

	// Deleted by hand: the resync puts them back.
	ip := c.claim(t, "b", netip.Addr{})
	waitFor(t, "entry of "+ip.String(), func() bool { return h.neigh(t)[ip] != "" })
	dev := model.VXLANName(kVNI)
	for _, cmd := range [][]string{
		{"ip", "neigh", "del", ip.String(), "dev", dev},
		{"bridge", "fdb", "del", derivedMAC(ip), "dev", dev, "dst", c.vteps["b"].String(), "self"},
	} {
		if _, err := h.ex.sh(cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	if h.neigh(t)[ip] != "" {
		t.Fatal("the entry is still there after deleting it")
	}
	a.Resync()
	waitFor(t, "the resync to repair "+ip.String(), func() bool {
		es, err := h.dp.entries(ctx, h.n, kVNI)
		return err == nil && es.Neigh[ip] == derivedMAC(ip) && es.FDB[derivedMAC(ip)] == c.vteps["b"]
	})
}

func checkFilter(t *testing.T, c *kCluster, h *kHost) {
	want := []netip.Addr{c.vteps["b"], c.vteps["c"]}
	waitFor(t, "the VTEP filter", func() bool {
		var f bridge.VTEPFilter
		_ = h.ex.do(func() error { var err error; f, err = h.dp.d.ReadVTEPFilter(); return err })
		return f.Port == model.DefaultVXLANPort && slices.Equal(f.VTEPs, want)
	})
}

// checkDeadHost: c's lease goes; after the grace its claims are freed by
// a and its entries go.
func checkDeadHost(t *testing.T, c *kCluster, h *kHost) {
	ips := []netip.Addr{c.claim(t, "c", netip.Addr{}), c.claim(t, "c", netip.Addr{})}
	waitFor(t, "c's entries", func() bool { n := h.neigh(t); return n[ips[0]] != "" && n[ips[1]] != "" })
	if err := c.regs["c"].Close(context.Background()); err != nil { // the liveness key goes at once
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "c's entries freed", func() bool { n := h.neigh(t); return n[ips[0]] == "" && n[ips[1]] == "" })
	claims, _, err := c.stores["b"].Claims(context.Background(), "appnet")
	if err != nil {
		t.Fatal(err)
	}
	for _, adv := range claims {
		if adv.Host == "c" {
			t.Errorf("claim %s of dead host c left", adv.IP)
		}
	}
	t.Logf("dead host c (grace 1s, interval 200ms): entries gone %v after its lease", time.Since(start).Round(time.Millisecond))
}

// checkReassert: a is cut off; meanwhile one of its addresses is taken by
// b. On return a keeps the other and reports that one.
func checkReassert(t *testing.T, c *kCluster, h *kHost, a *Agent) {
	ctx := context.Background()
	kept, lost := c.claim(t, "a", netip.Addr{}), c.claim(t, "a", netip.Addr{})
	h.reg.down.Store(true)
	waitFor(t, "degraded", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.degraded }) // seen by a tick
	if err := c.stores["a"].ReleaseAddress(ctx, "appnet", lost, "a"); err != nil {              // as if freed as dead
		t.Fatal(err)
	}
	c.claim(t, "b", lost)
	h.reg.down.Store(false)
	waitFor(t, "the conflict reported", func() bool { st := a.Status(); return !st.Degraded && len(st.Conflicts) == 1 })
	if got := a.Status().Conflicts[0].IP; got != lost {
		t.Errorf("conflict on %s, want %s", got, lost)
	}
	claims, _, err := c.stores["a"].Claims(ctx, "appnet")
	if err != nil {
		t.Fatal(err)
	}
	for _, adv := range claims {
		if adv.IP == kept && adv.Host != "a" || adv.IP == lost && adv.Host != "b" {
			t.Errorf("after re-assertion %s is held by %s", adv.IP, adv.Host)
		}
	}
}

// checkScale claims 1,000 addresses on b and returns the wanted count.
func checkScale(t *testing.T, c *kCluster, h *kHost) int {
	base := netip.MustParseAddr("10.77.2.0")
	ip := base
	for range 1000 {
		c.claim(t, "b", ip)
		ip = ip.Next()
	}
	last := ip.Prev()
	start := time.Now()
	waitFor(t, "1,000 entries", func() bool { return h.neigh(t)[last] != "" })
	n := len(h.neigh(t))
	t.Logf("1,000 claims on b: last entry on a %v after the last claim; %d neighbour entries", time.Since(start).Round(time.Millisecond), n)
	return n
}

// checkRestartStoreDown: entries flushed, etcd stopped, a new agent
// programs from the local copy.
func checkRestartStoreDown(t *testing.T, c *kCluster, h *kHost, local *state.Store, want int) {
	ctx := context.Background()
	if _, _, err := h.dp.SyncPeers(ctx, h.n, kVNI, nil); err != nil {
		t.Fatal(err)
	}
	c.srv.Stop()
	h.reg.down.Store(true)
	a := c.agent(h, local)
	defer a.shutdown()
	start := time.Now()
	a.AddNetwork(h.n, h.vx, "appnet")
	waitFor(t, fmt.Sprintf("%d entries from the local copy", want), func() bool { return len(h.neigh(t)) == want })
	t.Logf("restart with etcd down: %d entries programmed from the local copy in %v", want, time.Since(start).Round(time.Millisecond))
}
