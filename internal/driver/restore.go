package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/state"
)

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
			d.undoClusterJoin(&n)
			continue
		}
		d.mapMu.Lock()
		d.networks[n.ID] = &n
		d.mapMu.Unlock()
		if n.Cluster != "" {
			d.linkPools(n)
		}
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
	start := d.changes.Load()
	_, err := d.reconcile(ctx, true) // ensures the VXLAN devices too
	if err == nil {
		d.rechecked.Store(start) // it compared everything
	}
	errs = append(errs, err)
	d.forgetStale()
	d.restorePeers()
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
	e := &poolEntry{rec: rec, Book: ipam.NewBook(p)}
	for a, owner := range rec.Owners {
		if addr, err := netip.ParseAddr(a); err == nil {
			e.SetOwner(addr, owner)
		}
	}
	e.rec.Addrs, e.rec.Owners = nil, nil
	d.pools[rec.ID] = e
	return nil
}

// forgetStale flushes the conntrack entries that containers gone while
// mynet was down left on their addresses (their DeleteEndpoint's flush, or
// the janitor's after it, never ran), before the socket serves: from then
// on an address is flushed when its owner goes, and a new endpoint on it
// needs no flush of its own. Cluster networks are left out: their
// subnets hold other hosts' live endpoints, whose flows are not stale.
// Best effort, like every conntrack flush.
func (d *Driver) forgetStale() {
	var subnets []netip.Prefix
	var keep []netip.Addr
	d.mapMu.RLock()
	for _, n := range d.networks {
		if n.Cluster != "" {
			continue
		}
		bn := toBridgeNetwork(n)
		for _, s := range slices.Concat(bn.IPv4, bn.IPv6) {
			subnets = append(subnets, s.Pool)
			keep = append(keep, s.Gateway.Addr())
		}
	}
	for _, e := range d.endpoints {
		if n := d.networks[e.NetworkID]; n != nil && n.Cluster == "" {
			keep = append(keep, toBridgeEndpoint(n, e).Addresses...)
		}
	}
	d.mapMu.RUnlock()
	if len(subnets) == 0 {
		return
	}
	if err := d.cfg.Dataplane.ForgetStale(subnets, keep); err != nil {
		d.log.Warn("stale conntrack entries not flushed", "err", err)
	}
}
