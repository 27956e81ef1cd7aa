package cluster

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mynet/mynet/internal/cluster/etcdtest"
	"github.com/mynet/mynet/internal/model"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// newStore connects to srv (the package's shared etcd when nil) under a
// root of the test's own, so that tests never see each other's keys.
func newStore(t *testing.T, srv *etcdtest.Server, mod func(*Config)) *Store {
	t.Helper()
	if srv == nil {
		srv = etcdtest.Shared(t)
	}
	cfg := Config{
		Endpoints:      []string{srv.Endpoint},
		RequestTimeout: 5 * time.Second,
		Root:           "/t/" + strings.ReplaceAll(t.Name(), "/", "_") + model.DefaultClusterRoot,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Leave no keys behind on the shared server.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = s.cli.Delete(ctx, cfg.Root+"/", clientv3.WithPrefix())
		_ = s.Close()
	})
	return s
}

func spec(name, subnet, gw string) model.ClusterSpec {
	return model.ClusterSpec{Name: name, Subnet: netip.MustParsePrefix(subnet), Gateway: netip.MustParseAddr(gw), ICC: true}
}

func advert(host string) model.EndpointAdvert {
	vtep := map[string]string{"a": "198.19.77.1", "b": "198.19.77.2", "c": "198.19.77.3"}[host]
	if vtep == "" {
		vtep = "198.19.77.9"
	}
	return model.EndpointAdvert{Host: host, VTEP: netip.MustParseAddr(vtep)}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// keys lists every key under the store's root.
func keys(t *testing.T, s *Store) []string {
	t.Helper()
	resp, err := s.cli.Get(ctxT(t), s.cfg.Root+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), s.cfg.Root))
	}
	return out
}

// fakeMetrics records what the store reports.
type fakeMetrics struct {
	mu        sync.Mutex
	ops       map[string]int
	conflicts int
	up        float64
}

func (f *fakeMetrics) hooks() Metrics {
	return Metrics{
		RequestDuration: func(op string) Histogram { return opHist{f, op} },
		Conflicts:       counterFunc(func() { f.mu.Lock(); f.conflicts++; f.mu.Unlock() }),
		StoreUp:         gaugeFunc(func(v float64) { f.mu.Lock(); f.up = v; f.mu.Unlock() }),
	}
}

type opHist struct {
	f  *fakeMetrics
	op string
}

func (h opHist) Observe(float64) {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	if h.f.ops == nil {
		h.f.ops = map[string]int{}
	}
	h.f.ops[h.op]++
}

type counterFunc func()

func (c counterFunc) Inc() { c() }

type gaugeFunc func(float64)

func (g gaugeFunc) Set(v float64) { g(v) }

// startOwnEtcd runs an etcd for one test, for tests that stop or compact it.
func startOwnEtcd(t *testing.T) *etcdtest.Server { return etcdtest.Start(t) }
