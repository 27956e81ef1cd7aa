package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mynet/mynet/internal/model"
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
// It first compares a fingerprint of mynet's kernel objects with the one
// taken after the last pass and does nothing more when they match, so it
// is cheap to run every few seconds. With full set (SIGHUP), or after
// Recheck, it then compares the whole kernel with the state as well
// (recheck), while endpoint calls go on. It reports whether the
// fingerprint comparison found something changed from outside.
func (d *Driver) Reconcile(ctx context.Context, full bool) (repaired bool, err error) {
	d.reconMu.Lock()
	defer d.reconMu.Unlock()
	repaired, err = d.pass(ctx, full)
	// What verify repairs, the next pass finds changed and reports.
	if verr := d.verify(ctx); verr != nil {
		err = errors.Join(err, verr)
	}
	return repaired, err
}

func (d *Driver) pass(ctx context.Context, full bool) (repaired bool, err error) {
	if d.fingerprint == nil {
		// Nothing to compare with (the startup pass failed): everything,
		// under opMu alone.
		d.lockForPass(ctx)
		defer d.opMu.Unlock()
		start := d.changes.Load()
		repaired, err = d.reconcile(ctx, true)
		if err == nil {
			d.recheckDue = false // it compared everything
			d.rechecked.Store(start)
		}
		return repaired, err
	}
	recheck := full || d.recheckDue
	start := d.changes.Load()
	done, busy, err := d.quickPass()
	if err != nil {
		return false, err
	}
	// A call under way leaves the fingerprints to take in for later; a
	// recheck ensures everything anyway, with calls going on.
	if !done && !(busy && recheck) {
		// The fingerprints under opMu alone first wait for the
		// dataplane's deferred cleanups; a pass that found a call in
		// flight has not waited for them yet, and a deleted container's
		// veth can take tens of milliseconds to go on a busy host: wait
		// here, holding nothing, so no endpoint call waits for it.
		d.cfg.Dataplane.Sync()
		d.lockForPass(ctx)
		repaired, err = d.reconcile(ctx, false)
		d.opMu.Unlock()
		if err != nil {
			return repaired, err
		}
	}
	if !recheck {
		return repaired, nil
	}
	if err := d.recheck(ctx); err != nil {
		return repaired, err // and the next pass rechecks again
	}
	d.recheckDue = false
	d.rechecked.Store(start)
	return repaired, nil
}

// lockForPass takes opMu alone for a pass without queueing for it at
// first: a writer waiting on a sync.RWMutex holds up every new reader, so
// a pass blocked behind a long publish would stop every container start
// and stop with it. It tries for up to passLockPatience, then queues like
// any writer, so that a steady stream of endpoint calls cannot put the
// pass off for ever.
func (d *Driver) lockForPass(ctx context.Context) {
	deadline := time.Now().Add(passLockPatience)
	for !d.opMu.TryLock() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.opMu.Lock()
			return
		}
		time.Sleep(passLockRetry)
	}
}

// passLockPatience and passLockRetry pace lockForPass.
const (
	passLockPatience = 2 * time.Second
	passLockRetry    = 5 * time.Millisecond
)

// Recheck makes the next pass compare the kernel with the state, the
// anti-spoofing filters included, even if the fingerprints have not
// changed. A change made from outside to an object in the interval in
// which mynet itself changed it ends up in the fingerprint a pass takes
// in (verify covers bridges, veths and rules of networks and endpoints,
// not the filters or the chains); the periodic loop calls this now and
// then so such a change is repaired too. See recheck.
func (d *Driver) Recheck() {
	d.reconMu.Lock()
	defer d.reconMu.Unlock()
	d.recheckDue = true
}

// recheckUseful reports whether mynet changed anything since the start of
// the last recheck. Only a change from outside in an interval in which
// mynet changed the same object hides from the fingerprints; with no
// change of mynet's own since, every change from outside shows in the
// comparison of the next pass, and a recheck would find nothing more (at
// 1,000 endpoints it ensures each one: half a second of work, every tenth
// pass, on a host where nothing happens).
func (d *Driver) recheckUseful() bool { return d.changes.Load() != d.rechecked.Load() }

// repairScope is what a pass under opMu alone ensures again: everything
// when it has no fingerprint to compare with, else the objects whose
// digests changed since the last pass.
type repairScope struct {
	all     bool
	damaged map[string]bool // digest keys
}

// network reports whether the network is to be ensured again. Damage to
// what all networks share (mynet's chains and hooks, IPv4 forwarding) is
// repaired by ensuring every network.
func (s repairScope) network(id string) bool {
	return s.all || s.damaged[""] || s.damaged["net:"+id]
}

// followsDocker reports whether the network is to be ensured again because
// Docker's bridges changed: its LAN chain lists them (nat-unprotected).
func (s repairScope) followsDocker(n *state.Network) bool {
	return s.damaged[model.DigestDocker] && (n.GatewayMode4 == GatewayNATUnprotected || n.GatewayMode6 == GatewayNATUnprotected)
}

// endpoint reports whether the endpoint is to be ensured again, and with
// its anti-spoofing filter. A bridge deleted and re-created has released
// its ports, so the endpoints of a damaged network are ensured too.
// Re-applying the anti-spoofing filters costs a netlink transaction per
// endpoint, so it is done only where they changed from outside (or on a
// full pass), not after every container mynet itself started.
func (s repairScope) endpoint(e *state.Endpoint) (ensure, respoof bool) {
	respoof = s.all || s.damaged["spoof"] || s.damaged["veth:"+e.HostVeth]
	return respoof || s.damaged["ep:"+e.ID] || s.damaged["net:"+e.NetworkID], respoof
}

// reconcile is a pass under opMu alone; with full (at startup, or with no
// fingerprint to compare with) it ensures everything.
func (d *Driver) reconcile(ctx context.Context, full bool) (repaired bool, err error) {
	fp, sfp, err := d.fingerprints()
	if err != nil {
		return false, err
	}
	dirty := d.changes.Load() != d.adopted
	blind := d.fingerprint == nil // nothing to compare with
	changed, damaged := d.changed(fp, sfp)
	if !full && !blind && len(damaged) == 0 {
		if !dirty {
			return false, nil
		}
		return false, d.adoptOwnChanges(fp, sfp)
	}
	// Only a change nobody in this process made counts as a repair; Docker's
	// networks coming and going does not (model.DigestDocker), nor Docker's
	// rules moving to another backend (model.DigestFirewall).
	damaged = slices.DeleteFunc(damaged, func(k string) bool { return k == model.DigestDocker || k == model.DigestFirewall })
	repaired = !blind && len(damaged) > 0
	var errs []error
	// Following dockerd to its new backend is mynet's own change; what
	// Docker's switch did to the old backend's chains is moot once mynet's
	// rules left it. The links are checked all the same.
	switched, err := d.followFirewall(ctx)
	errs = append(errs, err)
	if switched {
		full, repaired = true, false
	}
	// What mynet changed since the last pass is ensured too: a firewall
	// reload right after a container started flushed its port rules with
	// the others.
	scope := repairScope{all: full || blind, damaged: map[string]bool{}}
	for _, k := range changed {
		scope.damaged[k] = true
	}
	errs = append(errs, d.repairInScope(ctx, scope)...)
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
	if fp, sfp, err = d.fingerprints(); err != nil {
		return repaired, err
	}
	d.adopt(fp, sfp, d.changes.Load(), false)
	if repaired {
		d.log.Warn("mynet's links or rules were changed from outside; restored them", "objects", digestNames(damaged))
	}
	return repaired, nil
}

// repairInScope ensures the networks and endpoints in scope: links one by
// one, then the rules of all of them compared with the ruleset at once,
// one read and one transaction per family, not one per object.
func (d *Driver) repairInScope(ctx context.Context, scope repairScope) []error {
	var errs []error
	var ruleNets []model.Network
	var ruleEps []model.Endpoint
	for _, n := range d.networks {
		if !scope.network(n.ID) && !scope.followsDocker(n) {
			continue
		}
		bn := toBridgeNetwork(n)
		ruleNets = append(ruleNets, bn)
		if err := d.cfg.Dataplane.EnsureBridge(ctx, bn); err != nil {
			errs = append(errs, fmt.Errorf("restore network %s: %w", model.Short(n.ID), err))
		} else if err := d.ensureVXLAN(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range d.endpoints {
		if ensure, respoof := scope.endpoint(e); ensure {
			errs = append(errs, d.reconcileEndpoint(ctx, e, respoof, &ruleEps))
		}
	}
	if added, err := d.cfg.Dataplane.EnsureRules(ctx, ruleNets, ruleEps); err != nil {
		errs = append(errs, fmt.Errorf("restore rules: %w", err))
	} else if len(added) > 0 {
		d.log.Info("firewall rules restored", "added", added, "networks", len(ruleNets), "endpoints_with_ports", len(ruleEps))
	}
	return errs
}

// adoptOwnChanges takes in the fingerprints when only mynet itself changed
// things since the last pass (quickPass left it here because an endpoint
// call was under way or an endpoint's container died), without
// re-checking every network under the lock, which would stall requests
// after every container start. Endpoints whose container died are
// dropped: one listing of the links finds the suspects, and each is looked
// up again before it is dropped.
func (d *Driver) adoptOwnChanges(fp, sfp model.Digests) error {
	live, err := d.cfg.Dataplane.LiveEndpoints()
	if err != nil {
		return err
	}
	dropped := false
	for _, e := range d.endpoints {
		if !live[e.ID] {
			dropped = d.dropIfStale(e) || dropped
		}
	}
	if dropped { // the drops changed both fingerprints: take them again
		if fp, sfp, err = d.fingerprints(); err != nil {
			return err
		}
	}
	d.adopt(fp, sfp, d.changes.Load(), true)
	return nil
}

// reconcileEndpoint keeps a live endpoint's veth on its bridge and up, its
// ports and (with respoof) its anti-spoofing filter, and drops a stale one:
// its host veth is gone, so its container died without the engine telling
// mynet (a legacy plugin gets no DeleteEndpoint for containers that died
// with the engine, protocol.md section 5). Its address is the engine's to
// release. A live endpoint with ports goes onto withPorts, whose rules the
// caller ensures with the others; without withPorts they are ensured here.
func (d *Driver) reconcileEndpoint(ctx context.Context, e *state.Endpoint, respoof bool, withPorts *[]model.Endpoint) error {
	n := d.networks[e.NetworkID]
	if n != nil {
		ep := toBridgeEndpoint(n, e)
		exists, err := d.cfg.Dataplane.EndpointExists(ep)
		if err != nil {
			return err
		}
		if exists {
			// EnsureEndpoint finds the veth in place and restores the rest:
			// a bridge that was deleted and re-created has released its
			// ports, so the veth must be attached again (and set up), or the
			// container stays cut off. Without respoof it leaves the
			// anti-spoofing filter alone (see reconcile).
			ep.AntiSpoofing = ep.AntiSpoofing && respoof
			if err := d.cfg.Dataplane.EnsureEndpoint(ctx, ep); err != nil {
				return fmt.Errorf("restore endpoint %s: %w", model.Short(e.ID), err)
			}
			if len(e.Ports) == 0 {
				return nil
			}
			if withPorts != nil {
				*withPorts = append(*withPorts, ep)
				return nil
			}
			return d.cfg.Dataplane.EnsurePorts(ctx, toBridgeNetwork(n), ep, toBridgePorts(e.Ports))
		}
	}
	return d.dropStale(ctx, e, n)
}

// dropStale deletes the record of an endpoint whose host veth is gone (n
// is its network, nil if that is gone too), then what is left of its
// kernel objects. The caller holds opMu alone, or the endpoint's lock.
func (d *Driver) dropStale(ctx context.Context, e *state.Endpoint, n *state.Network) error {
	d.log.Info("dropping stale endpoint", "network_id", model.Short(e.NetworkID), "endpoint_id", model.Short(e.ID), "network_known", n != nil)
	if err := d.forgetEndpoint(e); err != nil {
		return err
	}
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
		if p.rec.NetworkID != "" || p.Len() > 0 || p.rec.Created.IsZero() || time.Since(p.rec.Created) < stalePoolAge {
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

// digestNames are digest keys as the log names them: the key of what all
// networks share is empty, which a log shows as nothing at all.
func digestNames(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		if k == "" {
			k = "shared chains, hooks and sysctls"
		}
		out[i] = k
	}
	return out
}
