package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/state"
)

// stalePoolAge is how long a pool may sit unused and unattached before the
// reconcile releases it. The engine attaches a pool to a network (and asks
// for its gateway) within a second of requesting it; an older empty,
// unattached pool is one whose RequestPool the engine retried after a
// transport error, and which it will never release itself.
const stalePoolAge = 10 * time.Minute

// Reconcile repairs what changed behind mynet's back: bridges, addresses and
// rules that someone deleted or flushed (a firewall reload does this) are
// re-created, endpoints whose veth vanished with their container are
// dropped, and tagged objects the state does not know are removed; rules of
// deleted networks never come back, since only the state is re-applied.
// Unless full is set, it first compares a fingerprint of mynet's kernel
// objects with the one taken after the last pass and does nothing when they
// match, so it is cheap to run every few seconds. It reports whether it
// found something changed from outside.
func (d *Driver) Reconcile(ctx context.Context, full bool) (repaired bool, err error) {
	d.reconMu.Lock()
	defer d.reconMu.Unlock()
	if !full {
		if done, err := d.quickPass(); err != nil || done {
			return false, err
		}
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	return d.reconcile(ctx, full)
}

// Recheck makes the next pass compare the kernel with the state even if
// the fingerprint has not changed. A change made from outside while a pass
// was running can end up in the fingerprint that pass records; the
// periodic loop calls this now and then so such a change is repaired too.
func (d *Driver) Recheck() {
	d.reconMu.Lock()
	defer d.reconMu.Unlock()
	d.fingerprint = ""
}

// quickPass does a pass's common cases while container starts and stops go
// on: nothing changed, or only mynet itself changed things. Taking the
// fingerprints (iptables-save and link dumps) under opMu alone held every
// endpoint call up for 60-90 ms at 1000 endpoints, every interval. It
// reports false when the pass needs opMu alone after all: something
// changed from outside, an endpoint's container died, or an endpoint call
// was under way, so that the fingerprints may hold half of its change.
func (d *Driver) quickPass() (done bool, err error) {
	d.opMu.RLock() // network operations and ports hold it alone: they wait
	defer d.opMu.RUnlock()
	if d.fingerprint == "" {
		return false, nil
	}
	start := d.changes.Load()
	if d.inflight.Load() != 0 {
		return false, nil
	}
	fp, sfp, err := d.fingerprints()
	if err != nil {
		return false, err
	}
	var live map[string]bool
	dirty := start != d.adopted
	if dirty {
		if live, err = d.cfg.Dataplane.LiveEndpoints(); err != nil {
			return false, err
		}
	}
	if d.inflight.Load() != 0 || d.changes.Load() != start {
		return false, nil
	}
	if !dirty {
		return fp == d.fingerprint && sfp == d.spoofPrint, nil
	}
	// Only mynet itself changed things since the last pass: take in the
	// new fingerprints. Outside damage that coincided with them is caught
	// by the next Recheck.
	d.mapMu.RLock()
	for id := range d.endpoints {
		if !live[id] {
			d.mapMu.RUnlock()
			return false, nil // its container died: dropping it needs opMu alone
		}
	}
	d.mapMu.RUnlock()
	d.fingerprint, d.spoofPrint, d.adopted = fp, sfp, start
	return true, nil
}

// fingerprints returns the fingerprints of mynet's links and rules and of
// its anti-spoofing table.
func (d *Driver) fingerprints() (fp, sfp string, err error) {
	// A veth whose endpoint was just deleted may still be waiting for the
	// janitor: a fingerprint with it, taken in as mynet's own, would make
	// the next pass see its deletion as damage from outside.
	d.cfg.Dataplane.Sync()
	if fp, err = d.cfg.Dataplane.Fingerprint(); err != nil {
		return "", "", err
	}
	if sfp, err = d.cfg.Dataplane.SpoofFingerprint(); err != nil {
		return "", "", err
	}
	return fp, sfp, nil
}

// reconcile is a pass under opMu alone.
func (d *Driver) reconcile(ctx context.Context, full bool) (repaired bool, err error) {
	fp, sfp, err := d.fingerprints()
	if err != nil {
		return false, err
	}
	changed, spoofChanged := fp != d.fingerprint, sfp != d.spoofPrint
	dirty := d.changes.Load() != d.adopted
	if !full && !dirty && !changed && !spoofChanged {
		return false, nil
	}
	if !full && dirty && d.fingerprint != "" {
		// Only mynet itself changed things since the last pass (quickPass
		// left it here because an endpoint call was under way or an
		// endpoint's container died): take in the new fingerprints without
		// re-checking every network under the lock, which would stall
		// requests after every container start. Endpoints whose container
		// died are dropped: one listing of the links finds the suspects,
		// and each is looked up again before it is dropped.
		live, err := d.cfg.Dataplane.LiveEndpoints()
		if err != nil {
			return false, err
		}
		dropped := false
		for _, e := range d.endpoints {
			if !live[e.ID] {
				dropped = d.dropIfStale(e) || dropped
			}
		}
		if dropped { // the drops changed both fingerprints: take them again
			if fp, sfp, err = d.fingerprints(); err != nil {
				return false, err
			}
		}
		d.fingerprint, d.spoofPrint, d.adopted = fp, sfp, d.changes.Load()
		return false, nil
	}
	// Only a change nobody in this process made counts as a repair.
	repaired = !dirty && d.fingerprint != "" && (changed || spoofChanged)
	// Re-applying the anti-spoofing filters costs a netlink transaction per
	// endpoint, so it is done only when they were damaged from outside (or
	// on a full pass), not after every container mynet itself started.
	respoof := full || (spoofChanged && !dirty)
	var errs []error
	for _, n := range d.networks {
		if err := d.cfg.Dataplane.EnsureNetwork(ctx, toBridgeNetwork(n)); err != nil {
			errs = append(errs, fmt.Errorf("restore network %s: %w", netutil.Short(n.ID), err))
		}
	}
	for _, e := range d.endpoints {
		errs = append(errs, d.reconcileEndpoint(ctx, e, respoof))
	}
	keepNets, keepEps := map[string]bool{}, map[string]bool{}
	for id := range d.networks {
		keepNets[id] = true
	}
	for id := range d.endpoints {
		keepEps[id] = true
	}
	errs = append(errs, d.cfg.Dataplane.RemoveOrphans(ctx, keepNets, keepEps))
	errs = append(errs, d.releaseStalePools())
	if err := errors.Join(errs...); err != nil {
		return repaired, err
	}
	if d.fingerprint, d.spoofPrint, err = d.fingerprints(); err != nil {
		return repaired, err
	}
	d.adopted = d.changes.Load()
	if repaired {
		d.log.Warn("mynet's links or rules were changed from outside; restored them")
	}
	return repaired, nil
}

// reconcileEndpoint keeps a live endpoint's ports (and, with respoof, its
// anti-spoofing filter) and drops a stale one: its host veth is gone, so
// its container died without the engine telling mynet (a legacy plugin
// gets no DeleteEndpoint for containers that died with the engine,
// protocol.md section 5). Its address is the engine's to release.
func (d *Driver) reconcileEndpoint(ctx context.Context, e *state.Endpoint, respoof bool) error {
	n := d.networks[e.NetworkID]
	if n != nil {
		exists, err := d.cfg.Dataplane.EndpointExists(toBridgeEndpoint(n, e))
		if err != nil {
			return err
		}
		if exists {
			if respoof {
				// EnsureEndpoint finds the veth in place and restores the
				// rest: its anti-spoofing filter.
				if err := d.cfg.Dataplane.EnsureEndpoint(ctx, toBridgeEndpoint(n, e)); err != nil {
					return err
				}
			}
			if len(e.Ports) == 0 {
				return nil
			}
			return d.cfg.Dataplane.EnsurePorts(ctx, toBridgeNetwork(n), toBridgeEndpoint(n, e), toBridgePorts(e.Ports))
		}
	}
	d.log.Info("dropping stale endpoint", "network_id", netutil.Short(e.NetworkID), "endpoint_id", netutil.Short(e.ID), "network_known", n != nil)
	if err := d.cfg.Store.DeleteEndpoint(e.NetworkID, e.ID); err != nil {
		return err
	}
	d.mapMu.Lock()
	delete(d.endpoints, e.ID)
	d.index.remove(e)
	d.mapMu.Unlock()
	if n == nil {
		return nil
	}
	return d.cfg.Dataplane.DeleteEndpoint(ctx, toBridgeEndpoint(n, e))
}

func (d *Driver) releaseStalePools() error {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	var errs []error
	for id, p := range d.pools {
		if p.rec.NetworkID != "" || p.pool.Len() > 0 || p.rec.Created.IsZero() || time.Since(p.rec.Created) < stalePoolAge {
			continue
		}
		d.log.Info("releasing a pool the engine never used", "pool_id", id, "requested", p.rec.Created)
		if err := d.cfg.Store.DeletePool(id); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(d.pools, id)
	}
	return errors.Join(errs...)
}
