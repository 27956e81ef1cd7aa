package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/internal/peers"
	"github.com/mynet/mynet/metrics"
	"github.com/mynet/mynet/state"
)

// clusterFlags are serve's cluster mode flags (issue 14); cluster mode is
// on iff --cluster-store is given.
type clusterFlags struct {
	store            string
	ca, cert, key    string
	vtepAddr, vtepIf string
	vxlanPort        int
	hostID           string
	deadGrace        time.Duration
	endpoints        []string // parsed from store
}

func (c *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.store, "cluster-store", "", "cluster mode: the etcd of the cluster, etcd://HOST:2379[,etcd://HOST2:2379] (or HOST:PORT,...); off by default")
	fs.StringVar(&c.ca, "cluster-ca", "", "CA certificate (PEM) that signed etcd's server certificate; turns TLS on")
	fs.StringVar(&c.cert, "cluster-cert", "", "client certificate (PEM) for etcd, with --cluster-key")
	fs.StringVar(&c.key, "cluster-key", "", "client key (PEM) for etcd, with --cluster-cert")
	fs.StringVar(&c.vtepAddr, "vtep-addr", "", "this host's address on the underlay, where the other hosts send VXLAN traffic (or --vtep-iface)")
	fs.StringVar(&c.vtepIf, "vtep-iface", "", "the underlay interface; its first global IPv4 address is the VTEP (or --vtep-addr)")
	fs.IntVar(&c.vxlanPort, "vxlan-port", model.DefaultVXLANPort, "UDP port of mynet's VXLAN traffic (not 4789, swarm's overlay port)")
	fs.StringVar(&c.hostID, "host-id", "", "this host's ID in the cluster (default: a random ID kept in <state-dir>/host-id)")
	fs.DurationVar(&c.deadGrace, "cluster-dead-grace", 10*time.Minute, "how long a host may be gone from the cluster before a live host frees its addresses")
}

// check validates the flags that need nothing of the host.
func (c *clusterFlags) check() error {
	if c.store == "" {
		if c.ca != "" || c.cert != "" || c.key != "" || c.vtepAddr != "" || c.vtepIf != "" || c.hostID != "" {
			return errors.New("the cluster flags (--cluster-ca/-cert/-key, --vtep-addr, --vtep-iface, --host-id) need --cluster-store etcd://HOST:2379")
		}
		return nil
	}
	var err error
	if c.endpoints, err = parseClusterStore(c.store); err != nil {
		return err
	}
	switch {
	case c.vtepAddr == "" && c.vtepIf == "":
		return errors.New("cluster mode needs this host's VTEP: give --vtep-addr ADDRESS (on the underlay) or --vtep-iface INTERFACE")
	case c.vtepAddr != "" && c.vtepIf != "":
		return errors.New("give --vtep-addr or --vtep-iface, not both")
	case c.vxlanPort < 1 || c.vxlanPort > 65535:
		return fmt.Errorf("--vxlan-port %d is out of range: use 1 to 65535 (default %d)", c.vxlanPort, model.DefaultVXLANPort)
	case (c.cert == "") != (c.key == ""):
		return errors.New("give --cluster-cert and --cluster-key together")
	case c.deadGrace <= 0:
		return fmt.Errorf("--cluster-dead-grace %s must be positive", c.deadGrace)
	}
	if c.hostID != "" {
		if err := model.ValidateClusterName("--host-id", c.hostID); err != nil {
			return err
		}
	}
	for _, f := range []struct{ flag, path string }{{"--cluster-ca", c.ca}, {"--cluster-cert", c.cert}, {"--cluster-key", c.key}} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	return nil
}

// parseClusterStore turns --cluster-store into etcd client endpoints.
func parseClusterStore(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		hostport := e
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return nil, fmt.Errorf("--cluster-store: %q is not etcd://HOST:PORT", e)
			}
			switch u.Scheme {
			case "etcd", "http", "https":
			default:
				return nil, fmt.Errorf("--cluster-store: %q: scheme %q is not supported; use etcd://HOST:PORT", e, u.Scheme)
			}
			hostport = u.Host
		}
		host, port, err := net.SplitHostPort(hostport)
		if err != nil || host == "" {
			return nil, fmt.Errorf("--cluster-store: %q is not etcd://HOST:PORT (e.g. etcd://10.0.0.5:2379)", e)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("--cluster-store: %q: port %q is out of range", e, port)
		}
		out = append(out, hostport)
	}
	return out, nil
}

// resolveVTEP finds the VTEP address and the MTU of its interface.
func (c *clusterFlags) resolveVTEP() (netip.Addr, int, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("list interfaces: %w", err)
	}
	var want netip.Addr
	if c.vtepAddr != "" {
		if want, err = netip.ParseAddr(c.vtepAddr); err != nil {
			return want, 0, fmt.Errorf("--vtep-addr %q is not an IP address", c.vtepAddr)
		}
		if err := model.ValidateVTEP(want); err != nil {
			return want, 0, fmt.Errorf("--vtep-addr: %w", err)
		}
	}
	for _, ifc := range ifaces {
		if c.vtepIf != "" && ifc.Name != c.vtepIf {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return want, 0, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(ipn.IP)
			ip = ip.Unmap()
			if want.IsValid() && ip == want || !want.IsValid() && ip.Is4() && ip.IsGlobalUnicast() {
				return ip, ifc.MTU, nil
			}
		}
		if c.vtepIf != "" {
			return want, 0, fmt.Errorf("--vtep-iface %s has no global IPv4 address; give --vtep-addr", c.vtepIf)
		}
	}
	if c.vtepIf != "" {
		return want, 0, fmt.Errorf("--vtep-iface %s: no such interface on this host", c.vtepIf)
	}
	return want, 0, fmt.Errorf("--vtep-addr %s is not an address of this host; give the address of its underlay interface", want)
}

// hostID returns --host-id, or the ID kept in the state directory,
// created once at random.
func (c *clusterFlags) resolveHostID(stateDir string) (string, error) {
	if c.hostID != "" {
		return c.hostID, nil
	}
	path := filepath.Join(stateDir, "host-id")
	if b, err := os.ReadFile(path); err == nil {
		id := strings.TrimSpace(string(b))
		if err := model.ValidateClusterName("host ID in "+path, id); err != nil {
			return "", fmt.Errorf("%w; fix or remove the file, or give --host-id", err)
		}
		return id, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := "h" + hex.EncodeToString(b[:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write host ID: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write host ID: %w", err)
	}
	return id, nil
}

func (c *clusterFlags) tlsConfig() (*tls.Config, error) {
	if c.ca == "" && c.cert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return nil, fmt.Errorf("--cluster-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cluster-ca %s holds no PEM certificate", c.ca)
		}
	}
	if c.cert != "" {
		kp, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			return nil, fmt.Errorf("--cluster-cert/--cluster-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}

// clusterMode is cluster mode's running parts: the store, the host's
// registration and the peers agent, which keeps the remote endpoints of
// the driver's cluster networks programmed (driver.ClusterConfig.Peers).
type clusterMode struct {
	cfg       *driver.ClusterConfig
	store     *cluster.Store
	reg       lateRegistration
	agent     *peers.Agent
	agentDone chan struct{}
	// drv gives the agent the driver's claims; metrics the counters of
	// the metrics listener, when there is one. Both come after the store.
	drv     atomic.Pointer[driver.Driver]
	metrics atomic.Pointer[metrics.Cluster]
}

// claims are the driver's, once it exists.
func (m *clusterMode) claims() map[string][]model.EndpointAdvert {
	if d := m.drv.Load(); d != nil {
		return d.ClusterClaims()
	}
	return nil
}

// storeMetrics and agentMetrics reach the metrics listener's counters once
// startMetrics has registered them (lateCounter); until then, and without
// a listener, they count nothing.
func (m *clusterMode) storeMetrics() cluster.Metrics {
	return cluster.Metrics{
		RequestDuration: func(op string) cluster.Histogram {
			if c := m.metrics.Load(); c != nil {
				return c.StoreRequest(op)
			}
			return nil
		},
		Conflicts: lateCounter(func() cluster.Counter {
			if c := m.metrics.Load(); c != nil {
				return c.Conflicts
			}
			return nil
		}),
	}
}

func (m *clusterMode) agentMetrics() peers.Metrics {
	return peers.Metrics{Repairs: lateCounter(func() cluster.Counter {
		if c := m.metrics.Load(); c != nil {
			return c.Repairs
		}
		return nil
	})}
}

// lateCounter counts on the counter it returns, if any.
type lateCounter func() cluster.Counter

func (f lateCounter) Inc() {
	if c := f(); c != nil {
		c.Inc()
	}
}

// sample is what the cluster gauges show, from the agent's status.
func (m *clusterMode) sample() metrics.ClusterSample {
	st := m.agent.Status()
	out := metrics.ClusterSample{StoreUp: !st.Degraded}
	for _, n := range st.Networks {
		out.Networks = append(out.Networks, metrics.ClusterNetworkSample{Name: n.Name, Peers: len(n.Peers), FDBEntries: n.FDBEntries})
	}
	return out
}

// lateRegistration is the host's registration, which comes when the
// store first answers: mynet starts with etcd down and serves its
// networks from the local state.
type lateRegistration struct {
	p atomic.Pointer[cluster.Registration]
}

// Up reports whether the host's liveness lease is held.
func (r *lateRegistration) Up() bool {
	reg := r.p.Load()
	return reg != nil && reg.Up()
}

// startCluster builds the store and the driver's cluster configuration
// and registers the host, retrying in the background while the store does
// not answer. A host ID in use by another machine stops mynet.
func startCluster(ctx context.Context, c clusterFlags, stateDir string, st *state.Store, dp *bridge.Dataplane, log *slog.Logger) (*clusterMode, error) {
	vtep, mtu, err := c.resolveVTEP()
	if err != nil {
		return nil, err
	}
	id, err := c.resolveHostID(stateDir)
	if err != nil {
		return nil, err
	}
	tc, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	m := &clusterMode{agentDone: make(chan struct{})}
	store, err := cluster.New(cluster.Config{Endpoints: c.endpoints, TLS: tc, Logger: log, Metrics: m.storeMetrics()})
	if err != nil {
		return nil, err
	}
	vx := model.VXLAN{Local: vtep, Port: c.vxlanPort, UnderlayMTU: mtu}
	m.store = store
	m.agent = peers.New(peers.Config{Log: log, Store: store, Dataplane: dp, Local: st, HostID: id, Port: vx.PortOrDefault(),
		Registration: &m.reg, DeadGrace: c.deadGrace, LocalClaims: m.claims, Metrics: m.agentMetrics()})
	m.cfg = &driver.ClusterConfig{Store: store, Peers: m.agent, HostID: id, VXLAN: vx, Queue: st}
	host := model.ClusterHost{ID: id, VTEP: vtep}
	reg, err := store.RegisterHost(ctx, host)
	switch {
	case errors.Is(err, cluster.ErrHostIDClash):
		store.Close()
		return nil, fmt.Errorf("%w; give this host its own --host-id (or remove %s if the state directory was copied)", err, filepath.Join(stateDir, "host-id"))
	case err != nil:
		log.Warn("cluster store unreachable at startup; serving from the local state, registering in the background", "err", err)
		go m.registerLater(ctx, host, log)
	default:
		m.reg.p.Store(reg)
	}
	log.Info("cluster mode", "store", strings.Join(c.endpoints, ","), "host_id", id, "vtep", vtep, "vxlan_port", c.vxlanPort,
		"underlay_mtu", mtu, "dead_grace", c.deadGrace)
	return m, nil
}

// registerLater registers the host once the store answers.
func (m *clusterMode) registerLater(ctx context.Context, host model.ClusterHost, log *slog.Logger) {
	wait := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		reg, err := m.store.RegisterHost(ctx, host)
		if err == nil {
			m.reg.p.Store(reg)
			log.Info("registered in the cluster store", "host_id", host.ID)
			return
		}
		log.Warn("cluster registration failed; retrying", "retry_in", wait, "err", err)
		wait = min(2*wait, 30*time.Second)
	}
}

// run runs the peers agent until ctx ends; serve calls it once the
// driver has restored its networks (and handed them to the agent).
func (m *clusterMode) run(ctx context.Context, drv *driver.Driver) {
	m.drv.Store(drv)
	defer close(m.agentDone)
	m.agent.Run(ctx)
}

// stop waits for the agent (it writes its local copies as it ends), ends
// the registration (its liveness key goes at once) and closes the store;
// serve's context has ended.
func (m *clusterMode) stop(log *slog.Logger) {
	select {
	case <-m.agentDone:
	case <-time.After(10 * time.Second):
		log.Warn("the peers agent did not stop in time")
	}
	if reg := m.reg.p.Load(); reg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := reg.Close(ctx); err != nil {
			log.Warn("cluster unregister", "err", err)
		}
	}
	if err := m.store.Close(); err != nil {
		log.Warn("close cluster store", "err", err)
	}
}
