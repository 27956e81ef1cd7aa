// Package plugin translates Docker's NetworkDriver and IpamDriver plugin
// protocol into calls on mynet's dataplane, allocator and state store.
//
// It decodes requests, parses Docker's options into typed configuration
// once, and orders each operation so that a crash at any point leaves
// something the startup reconcile can finish or undo: creates write a
// pending record, then build kernel objects, then commit the record;
// deletes remove the record first, then the kernel objects, whose leftovers
// the reconcile finds by their tags. It never imports netlink or iptables.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/state"
)

// Dataplane builds kernel objects; bridge.Dataplane implements it.
// Every Delete undoes the matching Ensure and succeeds when the objects are
// already gone.
type Dataplane interface {
	EnsureNetwork(context.Context, model.Network) error
	DeleteNetwork(context.Context, model.Network) error
	EnsureEndpoint(context.Context, model.Endpoint) error
	DeleteEndpoint(context.Context, model.Endpoint) error
	// EndpointExists reports whether an endpoint's host veth is present;
	// LiveEndpoints returns the IDs of all endpoints whose veth is, from
	// one listing of the links.
	EndpointExists(model.Endpoint) (bool, error)
	LiveEndpoints() (map[string]bool, error)
	// Sync waits for the cleanups the dataplane deferred so far (a deleted
	// endpoint's veth goes after DeleteEndpoint has answered).
	Sync()
	// RemoveOrphans deletes tagged objects whose IDs are not in the sets.
	RemoveOrphans(ctx context.Context, networks, endpoints map[string]bool) error
	// Fingerprint and SpoofFingerprint digest mynet's links and rules,
	// and its anti-spoofing filters, object by object, so that a change
	// made from outside can be noticed cheaply and repaired where it is.
	Fingerprint() (model.Digests, error)
	SpoofFingerprint() (model.Digests, error)
	// HostPrefixes are subnets in use on the host, for choosing pools.
	HostPrefixes(v6 bool) ([]netip.Prefix, error)
	// EnsurePorts publishes ports of an endpoint; RemovePorts undoes it.
	EnsurePorts(context.Context, model.Network, model.Endpoint, []model.PortMapping) error
	RemovePorts(context.Context, model.Endpoint, []model.PortMapping) error
	// ProbePort fails when a host process holds the port; EphemeralPorts
	// is the host's range for ports chosen automatically.
	ProbePort(proto string, ip netip.Addr, port uint16) error
	EphemeralPorts() (first, last uint16)
}

// Store persists state; state.Store implements it, and a distributed store
// can replace it. Each method is one transaction.
type Store interface {
	Load() (state.Snapshot, error)
	PutNetwork(state.Network) error
	DeleteNetwork(id string) error
	PutEndpoint(state.Endpoint) error
	DeleteEndpoint(networkID, id string) error
	PutPool(state.Pool) error
	DeletePool(id string) error
	AddAddress(poolID, addr, owner, cursor string) error
	RemoveAddress(poolID, addr string) error
}

// Config configures a Driver.
type Config struct {
	Log          *slog.Logger
	Store        Store
	Dataplane    Dataplane
	DefaultPools []ipam.PoolSpec
	// Generation is the state file's generation, for the state dump.
	Generation string
	// MaxEndpoints per network stays below the kernel's 1024 ports per
	// bridge, so users get mynet's error instead of "exchange full".
	MaxEndpoints int
}

// Driver implements both plugin interfaces over one in-memory view of the
// state. The engine calls concurrently, and a container start must not
// wait for another container's veth or fsync, so there are five locks, taken
// in this order:
//
//   - reconMu: one reconcile pass at a time.
//   - opMu: endpoint operations share it; network operations, ports and
//     Restore hold it alone, and so does a reconcile pass that repairs or
//     drops something (its common case, a fingerprint comparison, shares
//     it). Work on the kernel and the store happens under it, never under
//     mapMu.
//   - epLocks: one per endpoint ID in use, so that a retried or
//     out-of-order request for one endpoint waits for the one in flight.
//   - mapMu: guards the networks and endpoints maps and the records they
//     point to, and is held only to read or change them. Join needs only
//     this one, so it answers while endpoints are being built.
//   - ipamMu: guards pools; an address request never waits for a veth.
//
// Whoever holds opMu alone may read the maps without mapMu (nobody else
// writes them then), and still takes mapMu to change them.
type Driver struct {
	cfg Config
	log *slog.Logger

	opMu    sync.RWMutex
	epLocks keyedLocks
	mapMu   sync.RWMutex
	ipamMu  sync.Mutex // guards pools

	// changes counts mynet's own changes to its kernel objects, and
	// inflight the endpoint operations under way, which may be making one.
	// A reconcile pass under the shared opMu takes a fingerprint in as
	// mynet's own only if neither moved while it was taken (quickPass).
	changes  atomic.Uint64
	inflight atomic.Int32
	// touched maps the digest keys (model.Digests) of the objects those
	// changes touched to the changes count of the latest, so a pass can
	// tell them from changes made from outside at the same time.
	touchMu sync.Mutex
	touched map[string]uint64

	// suspects are the digest keys of objects whose change a pass took in
	// as mynet's own; the next pass ensures them again (verify). Under
	// reconMu.
	suspects map[string]bool

	// reconMu serialises reconcile passes. adopted (changes as of the
	// fingerprints) and the fingerprints are written either under opMu
	// alone or under reconMu with opMu shared. A nil fingerprint makes the
	// next pass compare everything (Recheck).
	reconMu                 sync.Mutex
	adopted                 uint64
	fingerprint, spoofPrint model.Digests
	networks                map[string]*state.Network
	endpoints               map[string]*state.Endpoint // by endpoint ID
	// index holds each network's endpoints, those being created
	// included, by address and MAC; under mapMu.
	index endpointIndex
	pools map[string]*poolEntry // by pool ID
	// engineActivated tells when the engine last (re)started talking to
	// mynet; see ProgramExternalConnectivity.
	engineActivated func() time.Time
}

// keyedLocks are mutexes by key, which exist while someone holds or waits
// for them. Striping by hash made two unrelated endpoints wait for each
// other whenever their IDs collided, which at concurrency 64 was often.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	refs int // holders and waiters; under keyedLocks.mu
}

// lock locks key's mutex and returns its unlock.
func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// lookup returns an endpoint and its network under mapMu.
func (d *Driver) lookup(endpointID string) (*state.Endpoint, *state.Network) {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	ep := d.endpoints[endpointID]
	if ep == nil {
		return nil, nil
	}
	return ep, d.networks[ep.NetworkID]
}

type poolEntry struct {
	rec  state.Pool
	pool *ipam.Pool
	// owners and byOwner link addresses to the MAC of the endpoint they
	// were allocated for, so a retried RequestAddress gets the same answer.
	owners  map[netip.Addr]string
	byOwner map[string]netip.Addr
	// busy holds the addresses whose allocation or release is being
	// written to the store, outside ipamMu; the channel closes when the
	// write is done. Another request for the same address waits for it,
	// so the store sees the changes of one address in the order they were
	// made.
	busy map[netip.Addr]chan struct{}
}

func newPoolEntry(rec state.Pool, p *ipam.Pool) *poolEntry {
	return &poolEntry{rec: rec, pool: p, owners: map[netip.Addr]string{}, byOwner: map[string]netip.Addr{}, busy: map[netip.Addr]chan struct{}{}}
}

func (p *poolEntry) setOwner(a netip.Addr, owner string) {
	if owner != "" {
		p.owners[a], p.byOwner[owner] = owner, a
	}
}

func (p *poolEntry) release(a netip.Addr) {
	p.pool.Release(a)
	if owner, ok := p.owners[a]; ok {
		delete(p.byOwner, owner)
		delete(p.owners, a)
	}
}

// NewDriver returns a driver with empty state; call Restore before serving.
func NewDriver(cfg Config) *Driver {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.DefaultPools) == 0 {
		cfg.DefaultPools = ipam.DefaultPoolSpecs
	}
	if cfg.MaxEndpoints == 0 {
		cfg.MaxEndpoints = 1000
	}
	return &Driver{
		cfg: cfg, log: cfg.Log, engineActivated: func() time.Time { return time.Time{} },
		networks:  map[string]*state.Network{},
		endpoints: map[string]*state.Endpoint{},
		index:     endpointIndex{},
		pools:     map[string]*poolEntry{},
	}
}

// Register adds every protocol method to the router.
func (d *Driver) Register(r *Router) {
	d.engineActivated = r.Activated
	d.registerNetworkDriver(r)
	d.registerIPAM(r)
	handle(r, "Mynet.State", func(context.Context, *empty) (*Dump, error) { return d.Dump(), nil })
}

// Dump is mynet's whole state, for operators and tests.
type Dump struct {
	Networks  []state.Network
	Endpoints []state.Endpoint
	Pools     []state.Pool

	// Generation is in the tags of the links of this state (model.Tag).
	Generation string `json:",omitempty"`
}

// Dump returns a copy of the state.
func (d *Driver) Dump() *Dump {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	out := &Dump{Generation: d.cfg.Generation, Networks: []state.Network{}, Endpoints: []state.Endpoint{}, Pools: []state.Pool{}}
	for _, n := range d.networks {
		out.Networks = append(out.Networks, *n)
	}
	for _, e := range d.endpoints {
		out.Endpoints = append(out.Endpoints, *e)
	}
	for _, p := range d.pools {
		rec := p.rec
		for _, a := range p.pool.Used() {
			rec.Addrs = append(rec.Addrs, a.String())
		}
		out.Pools = append(out.Pools, rec)
	}
	return out
}

// Restore loads the state and makes the kernel match it, before the socket
// serves: the engine replays nothing after a restart (protocol.md section
// 5), so half-done operations of a crash are undone here and a full
// reconcile pass rebuilds whatever a reboot or a flush took.
func (d *Driver) Restore(ctx context.Context) error {
	snap, err := d.cfg.Store.Load()
	if err != nil {
		return err
	}
	return d.RestoreSnapshot(ctx, snap)
}

// RestoreSnapshot is Restore from a snapshot the caller loaded. A pool it
// cannot rebuild fails it with an error wrapping state.ErrUnusable before
// anything is restored or changed in the kernel: a partial state would
// make the reconcile delete the objects of the rest as orphans.
func (d *Driver) RestoreSnapshot(ctx context.Context, snap state.Snapshot) error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	d.ipamMu.Lock()
	for _, p := range snap.Pools {
		if err := d.restorePool(p); err != nil {
			clear(d.pools)
			d.ipamMu.Unlock()
			return fmt.Errorf("%w: %w", state.ErrUnusable, err)
		}
	}
	d.ipamMu.Unlock()
	var errs []error
	for i := range snap.Networks {
		n := snap.Networks[i]
		if n.Pending {
			d.log.Info("undoing network creation interrupted by a crash", "network_id", model.Short(n.ID))
			errs = append(errs, d.cfg.Dataplane.DeleteNetwork(ctx, toBridgeNetwork(&n)), d.cfg.Store.DeleteNetwork(n.ID))
			continue
		}
		d.mapMu.Lock()
		d.networks[n.ID] = &n
		d.mapMu.Unlock()
	}
	for i := range snap.Endpoints {
		e := snap.Endpoints[i]
		if n := d.networks[e.NetworkID]; e.Pending && n != nil {
			d.log.Info("undoing endpoint creation interrupted by a crash", "endpoint_id", model.Short(e.ID))
			errs = append(errs, d.cfg.Dataplane.DeleteEndpoint(ctx, toBridgeEndpoint(n, &e)), d.cfg.Store.DeleteEndpoint(e.NetworkID, e.ID))
			continue
		}
		d.mapMu.Lock()
		d.endpoints[e.ID] = &e // the reconcile drops it if its network is gone
		d.index.add(&e)
		d.mapMu.Unlock()
	}
	_, err := d.reconcile(ctx, true)
	errs = append(errs, err)
	d.log.Info("state restored", "networks", len(d.networks), "endpoints", len(d.endpoints), "pools", len(snap.Pools))
	return errors.Join(errs...)
}

func (d *Driver) restorePool(rec state.Pool) error {
	prefix, err := netip.ParsePrefix(rec.Pool)
	if err != nil {
		return fmt.Errorf("restore pool %s: %w", rec.ID, err)
	}
	var rng netip.Prefix
	if rec.Range != "" {
		if rng, err = netip.ParsePrefix(rec.Range); err != nil {
			return fmt.Errorf("restore pool %s: range: %w", rec.ID, err)
		}
	}
	p, err := ipam.NewPool(prefix, rng)
	if err != nil {
		return fmt.Errorf("restore pool %s: %w", rec.ID, err)
	}
	for _, a := range rec.Addrs {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("restore pool %s: address %q: %w", rec.ID, a, err)
		}
		if err := p.Reserve(addr); err != nil {
			return fmt.Errorf("restore pool %s: %w", rec.ID, err)
		}
	}
	if c, err := netip.ParseAddr(rec.Cursor); err == nil {
		p.SetCursor(c)
	}
	e := newPoolEntry(rec, p)
	for a, owner := range rec.Owners {
		if addr, err := netip.ParseAddr(a); err == nil {
			e.setOwner(addr, owner)
		}
	}
	e.rec.Addrs, e.rec.Owners = nil, nil
	d.pools[rec.ID] = e
	return nil
}

func toBridgeNetwork(n *state.Network) model.Network {
	return model.Network{
		ID: n.ID, Bridge: n.Bridge, MTU: n.MTU, IPv4: toBridgeSubnets(n.IPv4), IPv6: toBridgeSubnets(n.IPv6),
		ICC: n.ICC, Masquerade: n.Masquerade, Internal: n.Internal,
	}
}

func toBridgeSubnets(in []state.Subnet) []model.Subnet {
	out := make([]model.Subnet, 0, len(in))
	for _, s := range in {
		var bs model.Subnet
		bs.Pool, _ = netip.ParsePrefix(s.Pool)
		bs.Gateway, _ = netip.ParsePrefix(s.Gateway)
		out = append(out, bs)
	}
	return out
}

func toBridgeEndpoint(n *state.Network, e *state.Endpoint) model.Endpoint {
	mac, _ := parseMAC(e.MAC)
	ep := model.Endpoint{NetworkID: n.ID, ID: e.ID, Bridge: n.Bridge, HostVeth: e.HostVeth, ContainerVeth: e.ContainerVeth, MAC: mac, MTU: n.MTU, Ports: toBridgePorts(e.Ports), AntiSpoofing: n.AntiSpoofing}
	for _, a := range []string{e.IPv4, e.IPv6} {
		if p, err := netip.ParsePrefix(a); err == nil {
			ep.Addresses = append(ep.Addresses, p.Addr())
		}
	}
	return ep
}

func toBridgePorts(in []state.Port) []model.PortMapping {
	out := make([]model.PortMapping, 0, len(in))
	for _, p := range in {
		m := model.PortMapping{Proto: p.Proto, HostPort: p.HostPort, HostPortEnd: p.HostPortEnd, Port: p.Port}
		m.HostIP, _ = netip.ParseAddr(p.HostIP)
		m.ContainerIP, _ = netip.ParseAddr(p.ContainerIP)
		out = append(out, m)
	}
	return out
}

func fromSubnets(in []SubnetConfig) []state.Subnet {
	var out []state.Subnet // nil when empty, as a record loaded from JSON
	for _, s := range in {
		ss := state.Subnet{Pool: s.Pool.String()}
		if s.Gateway.IsValid() {
			ss.Gateway = s.Gateway.String()
		}
		out = append(out, ss)
	}
	return out
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }
