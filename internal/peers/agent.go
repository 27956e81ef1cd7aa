package peers

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/model"
)

// Store is the slice of *cluster.Store the agent uses.
type Store interface {
	// WatchEndpoints streams a network's adverts: a reset, then changes;
	// the channel closes when ctx ends.
	WatchEndpoints(ctx context.Context, network string) <-chan cluster.EndpointEvent
	Hosts(ctx context.Context) ([]cluster.HostStatus, error)
	FreeDeadHost(ctx context.Context, id string) (int, error)
	ClaimAddress(ctx context.Context, network string, want netip.Addr, adv model.EndpointAdvert) (netip.Addr, error)
	Network(ctx context.Context, name string) (model.ClusterNetwork, error)
}

// Dataplane is the slice of *bridge.Dataplane the agent uses.
type Dataplane interface {
	// SyncPeers makes the VXLAN device's entries exactly want's.
	SyncPeers(ctx context.Context, n model.Network, vni uint32, want []model.VXLANPeer) (written, deleted int, err error)
	// EnsurePeer writes one peer's entries; RemovePeer undoes it.
	EnsurePeer(ctx context.Context, n model.Network, vni uint32, p model.VXLANPeer) error
	RemovePeer(ctx context.Context, n model.Network, vni uint32, p model.VXLANPeer) error
	// SyncVTEPFilter lets the VXLAN port accept only vteps;
	// RemoveVTEPFilter undoes it.
	SyncVTEPFilter(ctx context.Context, port int, vteps []netip.Addr) error
	RemoveVTEPFilter(ctx context.Context) error
}

// LocalCopy keeps each network's peers across restarts (state.Store).
type LocalCopy interface {
	SavePeers(network string, peers []model.VXLANPeer) error
	// LoadPeers returns found false when no copy was saved.
	LoadPeers(network string) (peers []model.VXLANPeer, found bool, err error)
	DeletePeers(network string) error
}

// Counter counts events; a prometheus.Counter is one.
type Counter interface{ Inc() }

// Metrics are the agent's hooks; every field may be nil. The gauges of
// peers, FDB entries and the store's state are read from Status at scrape
// time; conflicts are counted by the store (cluster.Metrics.Conflicts),
// which sees every refused claim, the re-asserted ones included.
type Metrics struct {
	// Repairs counts resyncs that found entries changed from outside and
	// rewrote them: mynet_cluster_resync_repairs_total.
	Repairs Counter
}

// Defaults of Config.
const (
	DefaultDeadGrace = 10 * time.Minute
	DefaultInterval  = 5 * time.Second
	DefaultSaveDelay = 100 * time.Millisecond
)

// Config configures an Agent.
type Config struct {
	Log          *slog.Logger
	Store        Store
	Dataplane    Dataplane
	Local        LocalCopy
	HostID       string
	Port         int                    // VXLAN UDP port for the VTEP filter
	Registration interface{ Up() bool } // *cluster.Registration; nil: always up
	// DeadGrace is how long a host's liveness key must have been gone
	// (as seen from here) before its claims are freed.
	DeadGrace time.Duration
	// LocalClaims returns this host's claims by cluster network
	// (driver.ClusterClaims), re-asserted after a partition.
	LocalClaims func() map[string][]model.EndpointAdvert
	Metrics     Metrics
	// Interval is the period of the resync, the janitor and the degraded
	// check (DefaultInterval when 0).
	Interval time.Duration
	// SaveDelay coalesces the local copy's writes (DefaultSaveDelay when 0).
	SaveDelay time.Duration
}

// Agent keeps the peers of cluster networks; see the package comment.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // ends with Run's context, or Close
	cancel context.CancelFunc
	kick   chan struct{} // the VTEP set may have changed
	resync chan struct{} // Resync was asked for

	mu        sync.Mutex
	nets      map[string]*network
	hosts     []cluster.HostStatus // as last listed
	listed    time.Time
	deadSince map[string]time.Time
	degraded  bool
	reassert  bool // claims still to re-assert after a partition
	conflicts []Conflict
	filter    []netip.Addr // VTEPs last applied
	filterOn  bool         // a filter is applied (or may be, before the first sync)
	filterBad bool         // the last filter sync failed
}

// New returns an agent; call Run to start its periodic work.
// AddNetwork may be called before Run.
func New(cfg Config) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DeadGrace <= 0 {
		cfg.DeadGrace = DefaultDeadGrace
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.SaveDelay <= 0 {
		cfg.SaveDelay = DefaultSaveDelay
	}
	if cfg.Port == 0 {
		cfg.Port = model.DefaultVXLANPort
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Agent{
		cfg:       cfg,
		log:       cfg.Log.With("component", "peers"),
		ctx:       ctx,
		cancel:    cancel,
		kick:      make(chan struct{}, 1),
		resync:    make(chan struct{}, 1),
		nets:      map[string]*network{},
		deadSince: map[string]time.Time{},
		filterOn:  true, // unknown at start: a leftover filter may exist
	}
}

// AddNetwork starts (idempotently) keeping the network's remote endpoints
// as entries on its VXLAN device, which the caller has ensured. It programs
// from the local copy first, so it works with the store down. Adding a
// name again with another local network or VNI (the network was made
// anew) restarts it.
func (a *Agent) AddNetwork(n model.Network, vx model.VXLAN, name string) {
	a.mu.Lock()
	old := a.nets[name]
	if old != nil && old.n.ID == n.ID && old.vx.VNI == vx.VNI {
		old.mu.Lock()
		old.n, old.vx = n, vx // options may have been updated; same device
		old.mu.Unlock()
		a.mu.Unlock()
		return
	}
	if a.ctx.Err() != nil {
		a.mu.Unlock()
		return
	}
	nw := newNetwork(name, n, vx)
	ctx, cancel := context.WithCancel(a.ctx)
	nw.cancel = cancel
	a.nets[name] = nw
	a.mu.Unlock()
	if old != nil {
		a.stop(old, false)
	}
	a.log.Info("following the peers of a cluster network", "network", name, "network_id", model.Short(n.ID), "vni", vx.VNI)
	go a.follow(ctx, nw)
	a.kickFilter()
}

// RemoveNetwork stops keeping the network's peers and forgets the local
// copy; the entries go with the device, which the caller removes.
// Removing an unknown network does nothing.
func (a *Agent) RemoveNetwork(name string) {
	a.mu.Lock()
	nw := a.nets[name]
	delete(a.nets, name)
	a.mu.Unlock()
	if nw == nil {
		return
	}
	a.stop(nw, true)
	a.log.Info("stopped following the peers of a cluster network", "network", name)
	a.kickFilter()
}

// stop ends a network's watch and waits for it; forget deletes its local
// copy, otherwise a pending save is written now.
func (a *Agent) stop(nw *network, forget bool) {
	nw.cancel()
	<-nw.done
	nw.mu.Lock()
	pending := nw.stopSave()
	nw.removed = true
	nw.mu.Unlock()
	nw.saveMu.Lock() // wait for a save in flight
	defer nw.saveMu.Unlock()
	var err error
	switch {
	case forget:
		err = a.cfg.Local.DeletePeers(nw.name)
	case pending:
		err = a.cfg.Local.SavePeers(nw.name, nw.snapshot())
	}
	if err != nil {
		a.log.Warn("local copy of cluster peers not updated", "network", nw.name, "err", err)
	}
}

// Resync asks Run for a resync of every network now.
func (a *Agent) Resync() {
	select {
	case a.resync <- struct{}{}:
	default:
	}
}

func (a *Agent) kickFilter() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// networks is a snapshot of the followed networks.
func (a *Agent) networks() []*network {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*network, 0, len(a.nets))
	for _, nw := range a.nets {
		out = append(out, nw)
	}
	return out
}
