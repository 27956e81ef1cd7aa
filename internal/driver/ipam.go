package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// ErrPoolOverlap is returned for a --subnet that overlaps a held pool.
var ErrPoolOverlap = errors.New("subnet overlaps a pool mynet already holds")

// PoolRequest asks for a pool: Subnet (invalid: the next free one of the
// default pools) with an optional Range to allocate from.
type PoolRequest struct {
	Subnet, Range netip.Prefix
	V6            bool
}

// RequestPool reserves a subnet: the one given with --subnet, or the next
// free one of the default pools. The pool ID is the subnet itself, so it is
// the same for the same pool across restarts.
func (d *Driver) RequestPool(ctx context.Context, req PoolRequest) (id string, err error) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	subnet := req.Subnet
	if subnet.IsValid() {
		rng := ""
		if req.Range.IsValid() {
			rng = req.Range.String()
		}
		if p := d.pools[subnet.String()]; p != nil && p.rec.NetworkID == "" && p.rec.Range == rng {
			return p.rec.ID, nil // a retry of a request still in flight
		}
		if err := d.checkOverlap(subnet); err != nil {
			return "", err
		}
	} else if subnet, err = d.nextDefaultPool(req.V6); err != nil {
		return "", err
	}
	pool, err := ipam.NewPool(subnet, req.Range)
	if err != nil {
		return "", BadRequest(err)
	}
	rec := state.Pool{ID: subnet.String(), Pool: subnet.String(), V6: req.V6, Created: now()}
	if req.Range.IsValid() {
		rec.Range = req.Range.String()
	}
	if err := commitPoint(ctx); err != nil {
		return "", fmt.Errorf("request pool %s: nothing reserved: %w", subnet, err)
	}
	if err := d.cfg.Store.PutPool(rec); err != nil {
		return "", err
	}
	d.pools[rec.ID] = &poolEntry{rec: rec, Book: ipam.NewBook(pool), explicit: req.Subnet.IsValid()}
	return rec.ID, nil
}

func (d *Driver) checkOverlap(subnet netip.Prefix) error {
	var holders []string
	for _, p := range d.pools {
		if !p.Prefix().Overlaps(subnet) {
			continue
		}
		holder := "a network being created"
		if p.rec.NetworkID != "" {
			holder = "network " + model.Short(p.rec.NetworkID)
		}
		holders = append(holders, p.Prefix().String()+" (held by "+holder+")")
	}
	if len(holders) == 0 {
		return nil
	}
	slices.Sort(holders)
	return BadRequest(fmt.Errorf("%w: %s overlaps %s; choose another --subnet or remove that network", ErrPoolOverlap, subnet, strings.Join(holders, ", ")))
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
		busy = append(busy, p.Prefix())
	}
	subnet, err := ipam.NextFree(d.cfg.DefaultPools, v6, busy)
	if err != nil {
		return subnet, BadRequest(err)
	}
	return subnet, nil
}

// ReleasePool forgets a pool and its allocations; unknown pools succeed.
func (d *Driver) ReleasePool(id string) error {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	if _, ok := d.pools[id]; !ok {
		d.log.Debug("release of unknown pool", "pool_id", id)
		return nil
	}
	if err := d.cfg.Store.DeletePool(id); err != nil {
		return err
	}
	delete(d.pools, id)
	return nil
}

// AddressRequest asks for an address of a pool: Address (invalid: the
// next free one, or with Gateway the first usable one), for the endpoint
// with MAC Owner ("" when the engine sent none).
type AddressRequest struct {
	PoolID  string
	Address netip.Addr
	Gateway bool
	Owner   string
}

// RequestAddress hands out the gateway (the requested one or the first
// usable address), a specific address (--ip, --aux-address), or the next
// free one, with the pool's prefix length. The address is taken under
// ipamMu and written to the store after it is released, so that requests
// share fsyncs instead of queueing for them (see state.Store).
func (d *Driver) RequestAddress(ctx context.Context, req AddressRequest) (netip.Prefix, error) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock() // held again whenever a wait or a write lets it go
	p, ok := d.pools[req.PoolID]
	if !ok {
		return netip.Prefix{}, BadRequestf("pool %q is not held by mynet's IPAM", req.PoolID)
	}
	for {
		prev, ok := p.Owned(req.Owner)
		if !ok || (req.Address.IsValid() && req.Address != prev) {
			break
		}
		if !p.Wait(&d.ipamMu, prev) {
			return p.prefixed(prev), nil // a retry for the same endpoint
		}
	}
	if p.cluster != "" && !req.Gateway {
		// The gateway is the spec's, on every host: never claimed.
		return d.claimAddress(ctx, p, req)
	}
	addr, retry, err := d.takeAddress(p, req)
	if err != nil || retry {
		return p.prefixed(addr), err
	}
	// The address is taken in memory only; writing it commits it.
	if err := commitPoint(ctx); err != nil {
		p.Pool.Release(addr)
		return netip.Prefix{}, fmt.Errorf("request address %s in pool %s: nothing allocated: %w", addr, p.rec.ID, err)
	}
	if err := d.recordAddress(p, addr, req); err != nil {
		return netip.Prefix{}, err
	}
	if err := failpoint.Inject("ipam.address.committed"); err != nil {
		return netip.Prefix{}, err
	}
	return p.prefixed(addr), nil
}

// takeAddress takes the requested address in memory; retry says that it
// is the gateway already handed out, to be answered again as it is.
func (d *Driver) takeAddress(p *poolEntry, req AddressRequest) (addr netip.Addr, retry bool, err error) {
	switch {
	case req.Address.IsValid():
		addr = req.Address
		for p.Wait(&d.ipamMu, addr) {
		}
		if req.Gateway && p.rec.Gateway == addr.String() {
			return addr, true, nil
		}
		if err := p.Reserve(addr); err != nil {
			return addr, false, BadRequest(err)
		}
	case req.Gateway:
		if p.rec.Gateway != "" {
			gw, _ := netip.ParseAddr(p.rec.Gateway)
			return gw, true, nil
		}
		addr = p.FirstUsable()
		if err := p.Reserve(addr); err != nil {
			return addr, false, fmt.Errorf("reserve gateway %s: %w", addr, err)
		}
	default:
		if addr, err = p.Allocate(); err != nil {
			return addr, false, err
		}
	}
	return addr, false, nil
}

// recordAddress writes a taken address to the store, and gives it back
// if that fails.
func (d *Driver) recordAddress(p *poolEntry, addr netip.Addr, req AddressRequest) error {
	if req.Gateway {
		// Once per network: simply under the lock.
		if err := d.persistGateway(p, addr, req.Owner); err != nil {
			p.Pool.Release(addr)
			return err
		}
		p.SetOwner(addr, req.Owner)
		return nil
	}
	p.SetOwner(addr, req.Owner)
	cursor := "" // only a free pick moves the round-robin cursor
	if !req.Address.IsValid() {
		cursor = addr.String()
	}
	if err := p.Write(&d.ipamMu, addr, func() error { return d.cfg.Store.AddAddress(p.rec.ID, addr.String(), req.Owner, cursor) }); err != nil {
		p.Release(addr)
		return err
	}
	return nil
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

// prefixed is a with the pool's prefix length, as the engine wants it.
func (p *poolEntry) prefixed(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, p.Prefix().Bits())
}

// ReleaseAddress frees an address; unknown pools and free addresses
// succeed. The address stays taken until the store has forgotten it, so it
// cannot be handed out again before. In a cluster network the claim is
// released in the cluster store after that, or queued for it.
func (d *Driver) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	cluster, err := d.releaseAddress(poolID, addr)
	if err != nil || cluster == "" {
		return err
	}
	d.releaseClaim(ctx, cluster, addr)
	return nil
}

// releaseAddress releases an address locally and returns the cluster
// network whose claim it was, if any.
func (d *Driver) releaseAddress(poolID string, addr netip.Addr) (cluster string, err error) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	p, ok := d.pools[poolID]
	if !ok {
		d.log.Debug("release in unknown pool", "pool_id", poolID, "address", addr)
		return "", nil
	}
	for p.Wait(&d.ipamMu, addr) {
	}
	if p.rec.Gateway != addr.String() && p.InUse(addr) {
		cluster = p.cluster
	}
	if p.rec.Gateway == addr.String() {
		rec := p.rec
		rec.Gateway = ""
		if err := d.cfg.Store.PutPool(rec); err != nil {
			return "", err
		}
		p.rec = rec
	}
	if err := p.Write(&d.ipamMu, addr, func() error { return d.cfg.Store.RemoveAddress(p.rec.ID, addr.String()) }); err != nil {
		return "", err
	}
	p.Release(addr)
	return cluster, nil
}
