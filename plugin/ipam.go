package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// Address spaces. mynet's pools are host-local; the global space exists
// because the engine asks for one, and is refused.
const (
	localAddressSpace  = "local"
	globalAddressSpace = "global"
	gatewayRequestKey  = "RequestAddressType"
	gatewayRequestType = "com.docker.network.gateway"
	macAddressOption   = "com.docker.network.endpoint.macaddress"
)

// ErrPoolOverlap is returned for a --subnet that overlaps a held pool.
var ErrPoolOverlap = errors.New("subnet overlaps a pool mynet already holds")

func (d *Driver) registerIPAM(r *Router) {
	handle(r, "IpamDriver.GetCapabilities", func(context.Context, *empty) (*ipamapi.CapabilitiesResponse, error) {
		// With RequiresMACAddress the engine generates each endpoint's MAC
		// before asking for its address and sends it along: a key that makes
		// a retried RequestAddress recognisable (protocol.md section 4).
		return &ipamapi.CapabilitiesResponse{RequiresMACAddress: true}, nil
	})
	handle(r, "IpamDriver.GetDefaultAddressSpaces", func(context.Context, *empty) (*ipamapi.AddressSpacesResponse, error) {
		return &ipamapi.AddressSpacesResponse{LocalDefaultAddressSpace: localAddressSpace, GlobalDefaultAddressSpace: globalAddressSpace}, nil
	})
	handle(r, "IpamDriver.RequestPool", d.RequestPool)
	handleRemoval(r, "IpamDriver.ReleasePool", d.ReleasePool)
	handle(r, "IpamDriver.RequestAddress", d.RequestAddress)
	handleRemoval(r, "IpamDriver.ReleaseAddress", d.ReleaseAddress)
}

// RequestPool reserves a subnet: the one given with --subnet, or the next
// free one of the default pools. The PoolID is the subnet itself, so it is
// the same for the same pool across restarts.
func (d *Driver) RequestPool(ctx context.Context, req *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	if req.AddressSpace != "" && req.AddressSpace != localAddressSpace {
		return nil, badRequestf("address space %q is not supported; mynet pools are in %q", req.AddressSpace, localAddressSpace)
	}
	for k := range req.Options {
		return nil, badRequestf("unknown IPAM option %q (--ipam-opt); mynet's IPAM takes none", k)
	}
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	var subnet, rng netip.Prefix
	var err error
	if req.Pool != "" {
		if subnet, err = parseCanonical("subnet", req.Pool, req.V6); err != nil {
			return nil, err
		}
		if p := d.pools[subnet.String()]; p != nil && p.rec.NetworkID == "" && p.rec.Range == req.SubPool {
			return poolResponse(p), nil // a retry of a request still in flight
		}
		if err := d.checkOverlap(subnet); err != nil {
			return nil, err
		}
	} else {
		if req.SubPool != "" {
			return nil, badRequestf("--ip-range %s needs a --subnet", req.SubPool)
		}
		if subnet, err = d.nextDefaultPool(req.V6); err != nil {
			return nil, err
		}
	}
	if req.SubPool != "" {
		if rng, err = parseCanonical("ip-range", req.SubPool, req.V6); err != nil {
			return nil, err
		}
	}
	pool, err := ipam.NewPool(subnet, rng)
	if err != nil {
		return nil, badRequest(err)
	}
	rec := state.Pool{ID: subnet.String(), Pool: subnet.String(), V6: req.V6, Created: now()}
	if rng.IsValid() {
		rec.Range = rng.String()
	}
	if err := commitPoint(ctx); err != nil {
		return nil, fmt.Errorf("request pool %s: nothing reserved: %w", subnet, err)
	}
	if err := d.cfg.Store.PutPool(rec); err != nil {
		return nil, err
	}
	p := newPoolEntry(rec, pool)
	d.pools[rec.ID] = p
	return poolResponse(p), nil
}

func poolResponse(p *poolEntry) *ipamapi.RequestPoolResponse {
	return &ipamapi.RequestPoolResponse{PoolID: p.rec.ID, Pool: p.rec.Pool, Data: map[string]string{}}
}

func parseCanonical(what, s string, v6 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, badRequestf("%s %q is not a CIDR: %v", what, s, err)
	}
	if p.Addr().Is6() != v6 || p.Addr().Is4In6() {
		return p, badRequestf("%s %s is not an %s prefix", what, p, family(v6))
	}
	if p != p.Masked() {
		return p, badRequestf("%s %s has host bits set; use %s", what, p, p.Masked())
	}
	return p, nil
}

func (d *Driver) checkOverlap(subnet netip.Prefix) error {
	var holders []string
	for _, p := range d.pools {
		if !p.pool.Prefix().Overlaps(subnet) {
			continue
		}
		holder := "a network being created"
		if p.rec.NetworkID != "" {
			holder = "network " + model.Short(p.rec.NetworkID)
		}
		holders = append(holders, p.pool.Prefix().String()+" (held by "+holder+")")
	}
	if len(holders) == 0 {
		return nil
	}
	slices.Sort(holders)
	return badRequest(fmt.Errorf("%w: %s overlaps %s; choose another --subnet or remove that network", ErrPoolOverlap, subnet, strings.Join(holders, ", ")))
}

// nextDefaultPool picks a subnet that overlaps neither a held pool nor the
// host's own networks. Held pools include the ones the engine is holding
// while it loops over pools it rejected, so it never gets one twice.
func (d *Driver) nextDefaultPool(v6 bool) (netip.Prefix, error) {
	busy, err := d.cfg.Dataplane.HostPrefixes(v6)
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, p := range d.pools {
		busy = append(busy, p.pool.Prefix())
	}
	subnet, err := ipam.NextFree(d.cfg.DefaultPools, v6, busy)
	if err != nil {
		return subnet, badRequest(err)
	}
	return subnet, nil
}

// ReleasePool forgets a pool and its allocations; unknown pools succeed.
func (d *Driver) ReleasePool(_ context.Context, req *ipamapi.ReleasePoolRequest) (*empty, error) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	if _, ok := d.pools[req.PoolID]; !ok {
		d.log.Debug("release of unknown pool", "pool_id", req.PoolID)
		return nil, nil
	}
	if err := d.cfg.Store.DeletePool(req.PoolID); err != nil {
		return nil, err
	}
	delete(d.pools, req.PoolID)
	return nil, nil
}

// RequestAddress hands out the gateway (the requested one or the first
// usable address), a specific address (--ip, --aux-address), or the next
// free one. The address is taken under ipamMu and written to the store
// after it is released, so that requests share fsyncs instead of queueing
// for them (see state.Store).
func (d *Driver) RequestAddress(ctx context.Context, req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock() // held again whenever a wait or a write lets it go
	p, ok := d.pools[req.PoolID]
	if !ok {
		return nil, badRequestf("pool %q is not held by mynet's IPAM", req.PoolID)
	}
	gateway := req.Options[gatewayRequestKey] == gatewayRequestType
	owner := macOption(req.Options)
	var addr netip.Addr
	var err error
	for {
		prev, ok := p.byOwner[owner]
		if !ok || owner == "" || (req.Address != "" && req.Address != prev.String()) {
			break
		}
		if !d.waitAddress(p, prev) {
			return addressResponse(p, prev), nil // a retry for the same endpoint
		}
	}
	switch {
	case req.Address != "":
		if addr, err = netip.ParseAddr(req.Address); err != nil {
			return nil, badRequestf("address %q: %v", req.Address, err)
		}
		addr = addr.Unmap()
		for d.waitAddress(p, addr) {
		}
		if gateway && p.rec.Gateway == addr.String() {
			return addressResponse(p, addr), nil // a retry
		}
		if err := p.pool.Reserve(addr); err != nil {
			return nil, badRequest(err)
		}
	case gateway:
		if p.rec.Gateway != "" {
			gw, _ := netip.ParseAddr(p.rec.Gateway)
			return addressResponse(p, gw), nil // a retry
		}
		addr = p.pool.FirstUsable()
		if err := p.pool.Reserve(addr); err != nil {
			return nil, fmt.Errorf("reserve gateway %s: %w", addr, err)
		}
	default:
		if addr, err = p.pool.Allocate(); err != nil {
			return nil, err
		}
	}
	// The address is taken in memory only; writing it commits it.
	if err := commitPoint(ctx); err != nil {
		p.pool.Release(addr)
		return nil, fmt.Errorf("request address %s in pool %s: nothing allocated: %w", addr, p.rec.ID, err)
	}
	if gateway {
		// Once per network: simply under the lock.
		if err := d.persistGateway(p, addr, owner); err != nil {
			p.pool.Release(addr)
			return nil, err
		}
		p.setOwner(addr, owner)
	} else {
		p.setOwner(addr, owner)
		cursor := "" // only a free pick moves the round-robin cursor
		if req.Address == "" {
			cursor = addr.String()
		}
		if err := d.writeUnlocked(p, addr, func() error { return d.cfg.Store.AddAddress(p.rec.ID, addr.String(), owner, cursor) }); err != nil {
			p.release(addr)
			return nil, err
		}
	}
	if err := failpoint.Inject("ipam.address.committed"); err != nil {
		return nil, err
	}
	return addressResponse(p, addr), nil
}

// waitAddress waits, releasing ipamMu meanwhile, until no store write of
// addr is in flight; it reports whether it had to wait, after which the
// caller must look again at what it checked.
func (d *Driver) waitAddress(p *poolEntry, addr netip.Addr) bool {
	done, ok := p.busy[addr]
	if !ok {
		return false
	}
	d.ipamMu.Unlock()
	<-done
	d.ipamMu.Lock()
	return true
}

// writeUnlocked runs a store write of addr without ipamMu, which the
// caller holds, marking addr busy meanwhile (see poolEntry.busy).
func (d *Driver) writeUnlocked(p *poolEntry, addr netip.Addr, write func() error) error {
	done := make(chan struct{})
	p.busy[addr] = done
	d.ipamMu.Unlock()
	err := write()
	d.ipamMu.Lock()
	delete(p.busy, addr)
	close(done)
	return err
}

// macOption is the endpoint MAC the engine sends with RequestAddress, in
// canonical form, or "".
func macOption(opts map[string]string) string {
	mac, err := net.ParseMAC(opts[macAddressOption])
	if err != nil {
		return ""
	}
	return mac.String()
}

// persistGateway records addr as the pool's gateway.
func (d *Driver) persistGateway(p *poolEntry, addr netip.Addr, owner string) error {
	rec := p.rec
	rec.Gateway = addr.String()
	if err := d.cfg.Store.PutPool(rec); err != nil {
		return err
	}
	p.rec = rec
	return d.cfg.Store.AddAddress(p.rec.ID, addr.String(), owner, "")
}

func addressResponse(p *poolEntry, a netip.Addr) *ipamapi.RequestAddressResponse {
	return &ipamapi.RequestAddressResponse{Address: netip.PrefixFrom(a, p.pool.Prefix().Bits()).String(), Data: map[string]string{}}
}

// ReleaseAddress frees an address; unknown pools and free addresses
// succeed. The address stays taken until the store has forgotten it, so it
// cannot be handed out again before.
func (d *Driver) ReleaseAddress(_ context.Context, req *ipamapi.ReleaseAddressRequest) (*empty, error) {
	addr, err := netip.ParseAddr(req.Address)
	if err != nil {
		return nil, badRequestf("address %q: %v", req.Address, err)
	}
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	p, ok := d.pools[req.PoolID]
	if !ok {
		d.log.Debug("release in unknown pool", "pool_id", req.PoolID, "address", req.Address)
		return nil, nil
	}
	addr = addr.Unmap()
	for d.waitAddress(p, addr) {
	}
	if p.rec.Gateway == addr.String() {
		rec := p.rec
		rec.Gateway = ""
		if err := d.cfg.Store.PutPool(rec); err != nil {
			return nil, err
		}
		p.rec = rec
	}
	if err := d.writeUnlocked(p, addr, func() error { return d.cfg.Store.RemoveAddress(p.rec.ID, addr.String()) }); err != nil {
		return nil, err
	}
	p.release(addr)
	return nil, nil
}
