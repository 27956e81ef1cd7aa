// Package plugin translates Docker's NetworkDriver and IpamDriver plugin
// protocol into calls on mynet's dataplane, allocator and state store.
//
// It decodes requests, parses Docker's options into typed configuration
// once, and orders each operation so that a crash at any point leaves
// something the startup reconcile can finish or undo: creates write a
// pending record, then build kernel objects, then commit the record;
// deletes remove the record first, then the kernel objects, whose leftovers
// the reconcile finds by their tags. It never imports netlink or iptables.
package driver

import (
	"context"
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
	// EnsureBridge is EnsureNetwork without the rules. EnsureRules adds
	// the missing rules of many networks and endpoints' ports (their
	// Ports) with one read and one transaction per firewall family, and
	// says what it added: the reconcile checks the firewall with it.
	EnsureBridge(context.Context, model.Network) error
	EnsureRules(ctx context.Context, networks []model.Network, endpoints []model.Endpoint) ([]string, error)
	// FollowFirewall moves mynet's rules to the firewall backend
	// Docker's rules are in now, when mynet follows dockerd (serve
	// --firewall auto) and the last Fingerprint saw them move; rules
	// gives every network and every endpoint with ports. to is "" when
	// it moved nothing. No other firewall call may run meanwhile.
	FollowFirewall(ctx context.Context, rules func() ([]model.Network, []model.Endpoint)) (from, to, why string, err error)
	EnsureEndpoint(context.Context, model.Endpoint) error
	DeleteEndpoint(context.Context, model.Endpoint) error
	// EnsureVXLAN and RemoveVXLAN build and remove a cluster network's
	// VXLAN device on its bridge (cluster mode only).
	EnsureVXLAN(context.Context, model.Network, model.VXLAN) error
	RemoveVXLAN(ctx context.Context, n model.Network, vni uint32) error
	// EndpointExists reports whether an endpoint's host veth is present;
	// LiveEndpoints returns the IDs of all endpoints whose veth is, from
	// one listing of the links.
	EndpointExists(model.Endpoint) (bool, error)
	LiveEndpoints() (map[string]bool, error)
	// ForgetStale deletes conntrack entries from or to addresses in
	// subnets that are not in keep (what containers gone while mynet was
	// down left); the startup calls it before serving.
	ForgetStale(subnets []netip.Prefix, keep []netip.Addr) error
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
	// OwnerGoneWait bounds how long a conflict with another endpoint's
	// address, MAC or host port is retried while that endpoint's container
	// may be dying (default 5s); a real conflict is reported that much
	// later.
	OwnerGoneWait time.Duration
	// Repairs and ReconcileErrors count the ReconcileLoop's passes that
	// repaired something and that failed; either may be nil.
	Repairs, ReconcileErrors Counter
	// ObservePass, if set, gets the kind ("periodic", "recheck", "full")
	// and duration of each ReconcileLoop pass.
	ObservePass func(kind string, d time.Duration)
	// FirewallSwitches counts the passes that moved mynet's rules to the
	// firewall backend dockerd moved to; nil is fine.
	FirewallSwitches Counter
	// Cluster turns cluster mode on; nil: single-host only, nothing
	// changes.
	Cluster *ClusterConfig
}

// Driver implements both plugin interfaces over one in-memory view of the
// state. The engine calls concurrently, and a container start must not
// wait for another container's veth, fsync or port rules, so there are six
// locks, taken in this order:
//
//   - reconMu: one reconcile pass at a time.
//   - opMu: endpoint and port operations share it; network operations and
//     Restore hold it alone, and so does a reconcile pass that repairs
//     damage a fingerprint comparison found, or removes orphans. Its
//     common case, a fingerprint comparison, and the recheck of the whole
//     kernel share it. Work on the kernel and the store happens under it,
//     never under mapMu.
//   - epLocks: one per endpoint ID in use, so that a retried or
//     out-of-order request for one endpoint waits for the one in flight,
//     and the recheck's repair of an endpoint waits for neither. Calls
//     hold one at a time; only the recheck holds several, each taken
//     with tryLock, so that it never waits for one while holding others.
//   - portMu: guards reserved; held while a publish chooses host ports
//     against everyone else's, never while rules are written.
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

	portMu sync.Mutex
	// reserved holds the host ports a publish under way has chosen, by
	// endpoint ID, until the endpoint's record holds them.
	reserved map[string][]state.Port

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
	// alone or under reconMu with opMu shared. A nil fingerprint (the
	// startup pass has not succeeded) makes the next pass ensure
	// everything under opMu alone.
	reconMu                 sync.Mutex
	adopted                 uint64
	fingerprint, spoofPrint model.Digests
	// recheckDue makes the next pass a recheck (Recheck); under reconMu.
	recheckDue bool
	// rechecked is the changes count at the start of the last recheck
	// that completed (or of the startup pass, which compared everything):
	// the periodic loop rechecks only after mynet changed something since.
	rechecked atomic.Uint64
	networks  map[string]*state.Network
	endpoints map[string]*state.Endpoint // by endpoint ID
	// index holds each network's endpoints, those being created
	// included, by address and MAC; under mapMu.
	index endpointIndex
	pools map[string]*poolEntry // by pool ID
	// engineActivated tells when the engine last (re)started talking to
	// mynet; see ProgramExternalConnectivity. Under mapMu.
	engineActivated func() time.Time
	// queue replays the cluster store deletes made while it was down.
	queue clusterQueue
}

// poolEntry is one of mynet's IPAM pools: its record, and its addresses
// with their owners (ipam.Book). Under ipamMu.
type poolEntry struct {
	rec state.Pool
	*ipam.Book
	// cluster is the cluster network the pool is bound to, from its
	// network's CreateNetwork on: its addresses are claimed in the store.
	cluster string
	// explicit: the engine asked for this subnet (--subnet), rather than
	// the next free one; a cluster network needs that. Not persisted.
	explicit bool
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

// New returns a driver with empty state; call Restore before serving.
func New(cfg Config) *Driver {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.DefaultPools) == 0 {
		cfg.DefaultPools = ipam.DefaultPoolSpecs
	}
	if cfg.MaxEndpoints == 0 {
		cfg.MaxEndpoints = 1000
	}
	if cfg.OwnerGoneWait == 0 {
		cfg.OwnerGoneWait = 5 * time.Second
	}
	return &Driver{
		cfg: cfg, log: cfg.Log, engineActivated: func() time.Time { return time.Time{} },
		networks:  map[string]*state.Network{},
		endpoints: map[string]*state.Endpoint{},
		index:     endpointIndex{},
		pools:     map[string]*poolEntry{},
		queue:     clusterQueue{kick: make(chan struct{}, 1)},
	}
}

// SetEngineActivated tells the driver when the engine last (re)started
// talking to mynet (the protocol's handshake): an endpoint created before
// then may belong to a container that died with the old engine.
func (d *Driver) SetEngineActivated(f func() time.Time) {
	d.mapMu.Lock()
	defer d.mapMu.Unlock()
	d.engineActivated = f
}

func (d *Driver) activated() time.Time {
	d.mapMu.RLock()
	f := d.engineActivated
	d.mapMu.RUnlock()
	return f()
}

// Endpoint returns a copy of an endpoint's record.
func (d *Driver) Endpoint(id string) (state.Endpoint, bool) {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	if e := d.endpoints[id]; e != nil {
		return *e, true
	}
	return state.Endpoint{}, false
}

// Drain waits until no operation is under way, including work whose call
// was answered before it ended (see Commit).
func (d *Driver) Drain() {
	d.opMu.Lock()
	//lint:ignore SA2001 an empty critical section is the barrier
	d.opMu.Unlock()
}

// Dump returns a copy of the whole state, for operators and tests.
func (d *Driver) Dump() *state.Snapshot {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	out := &state.Snapshot{Generation: d.cfg.Generation, ClusterMode: d.cfg.Cluster != nil, Networks: []state.Network{}, Endpoints: []state.Endpoint{}, Pools: []state.Pool{}}
	for _, n := range d.networks {
		out.Networks = append(out.Networks, *n)
	}
	for _, e := range d.endpoints {
		out.Endpoints = append(out.Endpoints, *e)
	}
	for _, p := range d.pools {
		rec := p.rec
		for _, a := range p.Used() {
			rec.Addrs = append(rec.Addrs, a.String())
		}
		out.Pools = append(out.Pools, rec)
	}
	return out
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }
