package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// ErrNotFound means the plugin has no record of a network or endpoint.
var ErrNotFound = errors.New("not found")

func (d *Driver) registerNetworkDriver(r *Router) {
	handle(r, "NetworkDriver.GetCapabilities", d.networkCapabilities)
	handle(r, "NetworkDriver.CreateNetwork", d.CreateNetwork)
	handleRemoval(r, "NetworkDriver.DeleteNetwork", d.DeleteNetwork)
	handle(r, "NetworkDriver.CreateEndpoint", d.CreateEndpoint)
	handle(r, "NetworkDriver.EndpointOperInfo", d.EndpointOperInfo)
	handleRemoval(r, "NetworkDriver.DeleteEndpoint", d.DeleteEndpoint)
	handle(r, "NetworkDriver.Join", d.Join)
	handle(r, "NetworkDriver.Leave", d.Leave)
	handle(r, "NetworkDriver.ProgramExternalConnectivity", d.ProgramExternalConnectivity)
	handleRemoval(r, "NetworkDriver.RevokeExternalConnectivity", d.RevokeExternalConnectivity)
	handle(r, "NetworkDriver.DiscoverNew", noop[network.DiscoveryNotification])
	handle(r, "NetworkDriver.DiscoverDelete", noop[network.DiscoveryNotification])
	// AllocateNetwork and FreeNetwork are only sent by a swarm manager to
	// global-scope drivers; they stay unregistered (404, "not implemented").
}

func noop[Req any](context.Context, *Req) (*empty, error) { return nil, nil }

func (d *Driver) networkCapabilities(context.Context, *empty) (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.LocalScope}, nil
}

// CreateNetwork builds the bridge and its rules. A repeat of a request that
// already succeeded (the engine retries after transport errors) succeeds
// without changes; a different request for the same ID is refused.
func (d *Driver) CreateNetwork(ctx context.Context, req *network.CreateNetworkRequest) (*empty, error) {
	cfg, err := ParseCreateNetwork(req)
	if err != nil {
		return nil, err
	}
	rec := state.Network{
		ID: cfg.ID, Bridge: cfg.BridgeName, MTU: cfg.MTU,
		IPv4: fromSubnets(cfg.IPv4), IPv6: fromSubnets(cfg.IPv6), Created: now(),
		ICC: cfg.ICC, Masquerade: cfg.Masquerade, Internal: cfg.Internal, AntiSpoofing: cfg.AntiSpoofing,
	}
	if cfg.HostBinding.IsValid() {
		rec.HostBinding = cfg.HostBinding.String()
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if old, ok := d.networks[cfg.ID]; ok {
		old := *old
		old.Created = rec.Created
		if reflect.DeepEqual(old, rec) {
			return nil, nil
		}
		return nil, badRequestf("network %s already exists with a different configuration", model.Short(cfg.ID))
	}
	for _, n := range d.networks {
		if n.Bridge == cfg.BridgeName {
			return nil, badRequestf("bridge name %s is already used by mynet network %s; choose another %s", cfg.BridgeName, model.Short(n.ID), OptBridgeName)
		}
	}
	// A rollback runs to its end, also after the deadline that caused it.
	bg := context.WithoutCancel(ctx)
	if err := d.commitCreate(ctx, "network", rec.ID,
		func(pending bool) error { rec.Pending = pending; return d.cfg.Store.PutNetwork(rec) },
		func() error { return d.cfg.Store.DeleteNetwork(rec.ID) },
		func() error { return d.cfg.Dataplane.EnsureNetwork(ctx, toBridgeNetwork(&rec)) },
		func() error { return d.cfg.Dataplane.DeleteNetwork(bg, toBridgeNetwork(&rec)) },
	); err != nil {
		return nil, fmt.Errorf("create network %s: %w", model.Short(rec.ID), err)
	}
	d.mapMu.Lock()
	d.networks[rec.ID] = &rec
	d.mapMu.Unlock()
	d.linkPools(rec)
	return nil, nil
}

// commitCreate runs the crash-safe create sequence: a pending record, the
// kernel objects, the committed record; on failure it undoes whatever was
// done, newest first. The request's deadline is checked before each step,
// and the committed record is written only through commitPoint: a create
// whose deadline passed, or whose call was already answered, is rolled back
// before it returns, never committed later.
//
// Failpoints "<kind>.create.pending" and "<kind>.create.committed" stop it
// after each record write.
func (d *Driver) commitCreate(ctx context.Context, kind, id string, put func(pending bool) error, del, ensure, remove func() error) (retErr error) {
	what := kind + " " + model.Short(id)
	if err := ctxErr(ctx); err != nil {
		return err // it waited too long for its locks: nothing done
	}
	d.touch(kind, id)
	var undo netutil.Undo
	defer func() {
		if cerr := undo.RunIf(retErr, d.log); cerr != nil {
			d.log.Warn("rollback incomplete; the startup reconcile removes the rest", "object", what, "err", cerr)
		}
	}()
	if err := put(true); err != nil {
		return err
	}
	undo.Push("delete record of "+what, del)
	if err := failpoint.Inject(kind + ".create.pending"); err != nil {
		return err
	}
	if err := ctxErr(ctx); err != nil {
		return fmt.Errorf("rolled back: %w", err)
	}
	if err := ensure(); err != nil {
		return err // ensure undid its own steps, also when cut short
	}
	undo.Push("remove kernel objects of "+what, remove)
	if err := commitPoint(ctx); err != nil {
		return fmt.Errorf("rolled back: %w", err)
	}
	if err := put(false); err != nil {
		return err
	}
	return failpoint.Inject(kind + ".create.committed")
}

// linkPools records which network uses which of mynet's IPAM pools, so that
// overlap errors can name it. Pools of other IPAM drivers are not ours.
func (d *Driver) linkPools(n state.Network) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	for _, s := range append(append([]state.Subnet(nil), n.IPv4...), n.IPv6...) {
		p := d.pools[s.Pool]
		if p == nil || p.rec.NetworkID != "" {
			continue
		}
		p.rec.NetworkID = n.ID
		if err := d.cfg.Store.PutPool(p.rec); err != nil {
			d.log.Warn("could not record the network of a pool", "pool_id", p.rec.ID, "err", err)
		}
	}
}

// DeleteNetwork removes the network. The record goes first: if removing a
// kernel object then fails, the object is an orphan that the reconcile
// removes, rather than a record that would resurrect the network.
func (d *Driver) DeleteNetwork(ctx context.Context, req *network.DeleteNetworkRequest) (*empty, error) {
	if err := model.ValidateID("network ID", req.NetworkID); err != nil {
		return nil, badRequest(err)
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	n, ok := d.networks[req.NetworkID]
	if !ok {
		d.log.Debug("delete of unknown network", "network_id", model.Short(req.NetworkID))
		return nil, nil
	}
	// The engine refuses to remove a network with active endpoints, so any
	// left here are stale (their DeleteEndpoint never came): remove them.
	var stale []*state.Endpoint
	for _, e := range d.endpoints {
		if e.NetworkID == n.ID {
			stale = append(stale, e)
		}
	}
	if err := d.cfg.Store.DeleteNetwork(n.ID); err != nil {
		return nil, err
	}
	d.mapMu.Lock()
	delete(d.networks, n.ID)
	for _, e := range stale {
		delete(d.endpoints, e.ID)
		d.index.remove(e)
	}
	d.mapMu.Unlock()
	d.touch("network", n.ID)
	for _, e := range stale {
		d.touch("endpoint", e.ID)
	}
	if err := failpoint.Inject("network.delete.record"); err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx) // a removal finishes: see handleRemoval
	var errs []error
	for _, e := range stale {
		errs = append(errs, d.cfg.Dataplane.DeleteEndpoint(ctx, toBridgeEndpoint(n, e)))
	}
	errs = append(errs, d.cfg.Dataplane.DeleteNetwork(ctx, toBridgeNetwork(n)))
	return nil, errors.Join(errs...)
}

// CreateEndpoint makes the veth pair. The engine has already allocated the
// address; mynet returns only the MAC, and only when the engine sent none:
// echoing a field the engine filled makes it roll the endpoint back.
//
// An address or MAC held by an endpoint whose container died is taken
// over. After dockerd crashes it starts --restart containers again with
// their --ip and --mac-address, and never deletes the old endpoints; their
// veths go only when the kernel has dismantled the old namespaces, so one
// created before the engine's last handshake is waited for, as ports are.
func (d *Driver) CreateEndpoint(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	deadline := time.Now().Add(ownerGoneWait)
	for {
		resp, err := d.createEndpoint(ctx, req)
		var held *heldError
		if !errors.As(err, &held) {
			return resp, err
		}
		dropped, derr := d.dropDead(ctx, held.networkID, held.owner)
		if derr != nil {
			d.log.Warn("could not drop an endpoint whose container died", "endpoint_id", model.Short(held.owner), "err", derr)
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		if dropped {
			continue
		}
		if held.created.IsZero() || !held.created.Before(d.engineActivated().Truncate(time.Second)) {
			return nil, err // being created, or by the running engine
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heldError is an address or MAC that another endpoint of the network
// holds (created is zero while that endpoint is being created).
type heldError struct {
	msg              string
	networkID, owner string
	created          time.Time
}

func (e *heldError) Error() string { return e.msg }

// dropDead removes an endpoint whose host veth is gone, and reports
// whether the endpoint is gone; under the shared opMu, like the other
// endpoint calls. An endpoint still being created is a live one.
func (d *Driver) dropDead(ctx context.Context, networkID, id string) (bool, error) {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	if !d.committed(id) {
		return false, nil
	}
	defer d.epLocks.lock(id)()
	d.mapMu.RLock()
	e, n := d.endpoints[id], d.networks[networkID]
	d.mapMu.RUnlock()
	if e == nil || n == nil {
		return true, nil // deleted meanwhile
	}
	if exists, err := d.cfg.Dataplane.EndpointExists(toBridgeEndpoint(n, e)); err != nil || exists {
		return false, err
	}
	d.log.Info("dropping an endpoint whose container died, for a new one with its address or MAC", "network_id", model.Short(n.ID), "endpoint_id", model.Short(id))
	if err := d.cfg.Store.DeleteEndpoint(e.NetworkID, e.ID); err != nil {
		return false, err
	}
	d.mapMu.Lock()
	delete(d.endpoints, e.ID)
	d.index.remove(e)
	d.mapMu.Unlock()
	d.changes.Add(1)
	return true, d.cfg.Dataplane.DeleteEndpoint(ctx, toBridgeEndpoint(n, e))
}

// committed reports whether an endpoint exists and is not being created.
func (d *Driver) committed(id string) bool {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	return d.endpoints[id] != nil
}

func (d *Driver) createEndpoint(ctx context.Context, req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	iface := req.Interface
	if iface == nil {
		iface = &network.EndpointInterface{}
	}
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(req.EndpointID)()

	d.mapMu.Lock()
	n, ok := d.networks[req.NetworkID]
	if !ok {
		d.mapMu.Unlock()
		return nil, fmt.Errorf("create endpoint %s: network %s: %w in mynet's state", model.Short(req.EndpointID), model.Short(req.NetworkID), ErrNotFound)
	}
	if old, ok := d.endpoints[req.EndpointID]; ok {
		d.mapMu.Unlock()
		if old.NetworkID != n.ID {
			return nil, badRequestf("endpoint %s already exists on network %s", model.Short(old.ID), model.Short(old.NetworkID))
		}
		if err := sameInterface(old, iface); err != nil {
			return nil, err
		}
		return endpointResponse(old), nil
	}
	ep, err := d.newEndpoint(n, req.EndpointID, iface)
	if err != nil {
		d.mapMu.Unlock()
		return nil, err
	}
	// From here the endpoint holds its address and MAC, until it is
	// committed or has failed.
	d.index.add(&ep)
	d.mapMu.Unlock()
	committed := false
	defer func() {
		if !committed {
			d.mapMu.Lock()
			d.index.remove(&ep)
			d.mapMu.Unlock()
		}
	}()

	bg := context.WithoutCancel(ctx) // a rollback runs to its end
	if err := d.commitCreate(ctx, "endpoint", ep.ID,
		func(pending bool) error { ep.Pending = pending; return d.cfg.Store.PutEndpoint(ep) },
		func() error { return d.cfg.Store.DeleteEndpoint(ep.NetworkID, ep.ID) },
		func() error { return d.cfg.Dataplane.EnsureEndpoint(ctx, toBridgeEndpoint(n, &ep)) },
		func() error { return d.cfg.Dataplane.DeleteEndpoint(bg, toBridgeEndpoint(n, &ep)) },
	); err != nil {
		return nil, fmt.Errorf("create endpoint %s on network %s: %w", model.Short(ep.ID), model.Short(n.ID), err)
	}
	d.mapMu.Lock()
	d.endpoints[ep.ID] = &ep
	committed = true
	d.mapMu.Unlock()
	return endpointResponse(&ep), nil
}

// newEndpoint checks the network's capacity and the request's addresses
// and MAC, and builds the record; under mapMu.
func (d *Driver) newEndpoint(n *state.Network, id string, iface *network.EndpointInterface) (state.Endpoint, error) {
	if count := d.index.count(n.ID); count >= d.cfg.MaxEndpoints {
		return state.Endpoint{}, fmt.Errorf("network %s has %d endpoints, the most mynet puts on one bridge (the kernel allows 1024 ports); use another network", model.Short(n.ID), count)
	}
	host, ctr := model.VethNames(id)
	ep := state.Endpoint{NetworkID: n.ID, ID: id, HostVeth: host, ContainerVeth: ctr, Created: now()}
	var err error
	if ep.IPv4, err = endpointAddress("Address", iface.Address, n.IPv4); err != nil {
		return ep, err
	}
	if ep.IPv6, err = endpointAddress("AddressIPv6", iface.AddressIPv6, n.IPv6); err != nil {
		return ep, err
	}
	for _, f := range []struct{ field, addr string }{{"Address", ep.IPv4}, {"AddressIPv6", ep.IPv6}} {
		p, err := netip.ParsePrefix(f.addr)
		if err != nil {
			continue // none given
		}
		if owner := d.index.addrOwner(n.ID, p.Addr()); owner != "" {
			return ep, d.held(n, owner, fmt.Sprintf("Interface.%s %s is already the address of endpoint %s on network %s; give each container its own address (--ip/--ip6), or let the IPAM driver choose", f.field, p, model.Short(owner), model.Short(n.ID)))
		}
	}
	if iface.MacAddress != "" {
		mac, err := parseMAC(iface.MacAddress)
		if err != nil {
			return ep, badRequestf("Interface.MacAddress %w; give a unicast MAC (--mac-address), or none to let mynet choose", err)
		}
		ep.MAC = mac.String()
		if owner := d.index.macOwner(n.ID, ep.MAC); owner != "" {
			return ep, d.held(n, owner, fmt.Sprintf("Interface.MacAddress %s is already the MAC of endpoint %s on network %s; give each container its own (--mac-address), or none to let mynet choose", ep.MAC, model.Short(owner), model.Short(n.ID)))
		}
		return ep, nil
	}
	// A random MAC collides with one of 1000 others once in 10^11 tries;
	// drawing again is cheaper than explaining it.
	for {
		mac, err := netutil.RandomMAC()
		if err != nil {
			return ep, err
		}
		if ep.MAC = mac.String(); d.index.macOwner(n.ID, ep.MAC) == "" {
			ep.MACGenerated = true
			return ep, nil
		}
	}
}

// held returns the 400 for an address or MAC that owner holds; under mapMu.
func (d *Driver) held(n *state.Network, owner, msg string) error {
	e := &heldError{msg: msg, networkID: n.ID, owner: owner}
	if o := d.endpoints[owner]; o != nil {
		e.created = o.Created
	}
	return badRequest(e)
}

// endpointAddress checks an address the engine assigned: it must be a
// host address of one of the network's subnets, with the subnet's prefix
// length (the container's route to the subnet is derived from it), and not
// the gateway. An empty address is fine: the engine assigns IPv6 only with
// --ipv6.
func endpointAddress(field, addr string, subnets []state.Subnet) (string, error) {
	if addr == "" {
		return "", nil
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return "", badRequestf("Interface.%s %q: %v", field, addr, err)
	}
	a := p.Addr()
	for _, s := range subnets {
		pool, err := netip.ParsePrefix(s.Pool)
		if err != nil || !pool.Contains(a) {
			continue
		}
		if p.Bits() != pool.Bits() {
			return "", badRequestf("Interface.%s %s has another prefix length than the network's subnet %s; use %s", field, p, pool, netip.PrefixFrom(a, pool.Bits()))
		}
		if gw, err := netip.ParsePrefix(s.Gateway); err == nil && gw.Addr() == a {
			return "", badRequestf("Interface.%s %s is the network's gateway; give the container another address of %s", field, p, pool)
		}
		if what := reservedHost(pool, a); what != "" {
			return "", badRequestf("Interface.%s %s is the %s address of %s; give the container another address of it", field, p, what, pool)
		}
		return p.String(), nil
	}
	return "", badRequestf("Interface.%s %s is not in any subnet of the network (%s); give an address of one", field, p, describeSubnets(subnets))
}

// reservedHost names the IPv4 network or broadcast address of a subnet,
// which no host may have; a /31 or /32 has neither (RFC 3021).
func reservedHost(pool netip.Prefix, a netip.Addr) string {
	if !a.Is4() || pool.Bits() > 30 {
		return ""
	}
	if a == pool.Masked().Addr() {
		return "network"
	}
	if a == lastAddr(pool) {
		return "broadcast"
	}
	return ""
}

// lastAddr is the highest address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func describeSubnets(subnets []state.Subnet) string {
	if len(subnets) == 0 {
		return "none of this family"
	}
	out := make([]string, len(subnets))
	for i, s := range subnets {
		out[i] = s.Pool
	}
	return strings.Join(out, ", ")
}

// sameInterface checks that a retried CreateEndpoint asks for what the
// existing endpoint has: the engine retries with the same request, so
// another address or MAC is another endpoint under a reused ID.
func sameInterface(old *state.Endpoint, iface *network.EndpointInterface) error {
	for _, f := range []struct{ field, want, have string }{
		{"Address", iface.Address, old.IPv4}, {"AddressIPv6", iface.AddressIPv6, old.IPv6},
	} {
		want := f.want
		if p, err := netip.ParsePrefix(want); err == nil {
			want = p.String()
		}
		if want != f.have {
			return badRequestf("endpoint %s already exists with Interface.%s %q, not %q; delete it before creating it again with another address", model.Short(old.ID), f.field, f.have, f.want)
		}
	}
	want := ""
	if mac, err := net.ParseMAC(iface.MacAddress); err == nil {
		want = mac.String()
	}
	// A retry may ask for the MAC mynet chose, or again for none.
	if (iface.MacAddress == "" && !old.MACGenerated) || (iface.MacAddress != "" && want != old.MAC) {
		return badRequestf("endpoint %s already exists with Interface.MacAddress %q, not %q; delete it before creating it again with another MAC", model.Short(old.ID), old.MAC, iface.MacAddress)
	}
	return nil
}

// parseMAC accepts a 6-byte unicast Ethernet address; its errors start
// with the address, for the caller to name the field.
func parseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q is not a 6-byte Ethernet address", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("%s is a multicast address", s)
	}
	if bytes.Equal(mac, make(net.HardwareAddr, 6)) {
		return nil, fmt.Errorf("%s is the all-zero address, which no interface may have", s)
	}
	return mac, nil
}

func endpointResponse(ep *state.Endpoint) *network.CreateEndpointResponse {
	if !ep.MACGenerated {
		return &network.CreateEndpointResponse{}
	}
	return &network.CreateEndpointResponse{Interface: &network.EndpointInterface{MacAddress: ep.MAC}}
}

// EndpointOperInfo is called often and its answer is unused for remote
// drivers (protocol.md 2.2), so it answers at once, without the lock.
func (d *Driver) EndpointOperInfo(context.Context, *network.InfoRequest) (*network.InfoResponse, error) {
	return &network.InfoResponse{Value: map[string]string{}}, nil
}

// DeleteEndpoint removes the veth pair. Unknown endpoints succeed: after a
// plugin restart the engine may delete what mynet already cleaned up.
func (d *Driver) DeleteEndpoint(ctx context.Context, req *network.DeleteEndpointRequest) (*empty, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(req.EndpointID)()
	ep, n := d.lookup(req.EndpointID)
	if ep == nil {
		d.log.Debug("delete of unknown endpoint", "endpoint_id", model.Short(req.EndpointID))
		return nil, nil
	}
	if ep.NetworkID != req.NetworkID {
		// Endpoint IDs are random: a request that pairs one with another
		// network is confused, and deleting on its word could cut off a
		// running container.
		return nil, badRequestf("endpoint %s is on network %s, not on the NetworkID %s of the request; nothing was deleted", model.Short(ep.ID), model.Short(ep.NetworkID), model.Short(req.NetworkID))
	}
	if err := d.cfg.Store.DeleteEndpoint(ep.NetworkID, ep.ID); err != nil {
		return nil, err
	}
	d.mapMu.Lock()
	delete(d.endpoints, ep.ID)
	d.index.remove(ep)
	d.mapMu.Unlock()
	d.touch("endpoint", ep.ID)
	if err := failpoint.Inject("endpoint.delete.record"); err != nil {
		return nil, err
	}
	if n != nil { // a removal finishes: see handleRemoval
		return nil, d.cfg.Dataplane.DeleteEndpoint(context.WithoutCancel(ctx), toBridgeEndpoint(n, ep))
	}
	return nil, nil
}

// Join hands the container end of the veth to the engine, which moves it
// into the sandbox and names it eth<N>. The gateway must be returned: an
// endpoint without one makes the engine add a docker_gwbridge interface.
func (d *Driver) Join(ctx context.Context, req *network.JoinRequest) (*network.JoinResponse, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	ep, ok := d.endpoints[req.EndpointID]
	if !ok || ep.NetworkID != req.NetworkID {
		return nil, fmt.Errorf("join endpoint %s: %w on network %s in mynet's state", model.Short(req.EndpointID), ErrNotFound, model.Short(req.NetworkID))
	}
	n := d.networks[ep.NetworkID]
	resp := &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: ep.ContainerVeth, DstPrefix: "eth"}}
	// An internal network has no way out, so no default route; the engine
	// adds no docker_gwbridge leg for internal networks either.
	if !n.Internal {
		resp.Gateway = gatewayFor(ep.IPv4, n.IPv4)
		resp.GatewayIPv6 = gatewayFor(ep.IPv6, n.IPv6)
	}
	return resp, nil
}

// gatewayFor returns the gateway of the subnet that holds addr.
func gatewayFor(addr string, subnets []state.Subnet) string {
	a, err := netip.ParsePrefix(addr)
	if err != nil {
		return ""
	}
	for _, s := range subnets {
		pool, err1 := netip.ParsePrefix(s.Pool)
		gw, err2 := netip.ParsePrefix(s.Gateway)
		if err1 == nil && err2 == nil && pool.Contains(a.Addr()) {
			return gw.Addr().String()
		}
	}
	return ""
}

// Leave has nothing to undo: the engine moves the veth back to the host
// itself, and DeleteEndpoint removes it.
func (d *Driver) Leave(_ context.Context, req *network.LeaveRequest) (*empty, error) {
	return nil, validateIDs(req.NetworkID, req.EndpointID)
}

func validateIDs(networkID, endpointID string) error {
	if err := model.ValidateID("network ID", networkID); err != nil {
		return badRequest(err)
	}
	if err := model.ValidateID("endpoint ID", endpointID); err != nil {
		return badRequest(err)
	}
	return nil
}
