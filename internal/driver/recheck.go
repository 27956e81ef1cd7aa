package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// recheck compares the whole kernel with the state and repairs what
// differs, while endpoint calls go on: every tenth periodic pass, and the
// full pass of SIGHUP. Under opMu alone it held every container start and
// stop for as long as it took (400 ms at 1000 endpoints and 1000 ports).
//
// Under the shared opMu (taken per step, see recheckShared) networks
// cannot change, as their operations hold it alone, so their bridges are
// ensured as they are. An endpoint is ensured
// (with its anti-spoofing filter), or dropped when its veth is gone, under
// its own lock, as an endpoint call would. Rules are compared with the
// ruleset at once (EnsureRules) while the endpoints that publish are held
// by their locks. Only objects tagged by mynet that the state does not
// know need opMu alone: only then is one an orphan for sure, rather than
// the veth of an endpoint whose record is not committed yet. Those are
// rare; they are looked for in the fingerprint taken after the repairs.
func (d *Driver) recheck(ctx context.Context) error {
	orphans, err := d.recheckShared(ctx)
	if err != nil || len(orphans) == 0 {
		return err
	}
	return d.removeOrphans(ctx, orphans)
}

// recheckShared is the recheck under the shared opMu; it returns the
// digest keys of the orphans it found and did not remove. It takes opMu
// for each network, each endpoint and the rules apart, so that a network
// operation, which waits for opMu alone, waits for one of them and not
// for the whole recheck, with every endpoint call queued behind it.
func (d *Driver) recheckShared(ctx context.Context) (orphans []string, err error) {
	var errs []error
	d.mapMu.RLock()
	nets := slices.Collect(maps.Keys(d.networks))
	eps := slices.Collect(maps.Keys(d.endpoints))
	d.mapMu.RUnlock()
	for _, id := range nets {
		errs = append(errs, d.recheckNetwork(ctx, id))
	}
	for _, id := range eps {
		errs = append(errs, d.recheckEndpoint(ctx, id))
	}
	errs = append(errs, d.recheckRules(ctx), d.releaseStalePools())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	return d.adoptRecheck()
}

// recheckNetwork ensures a network's bridge, its addresses and switches
// again. Under the shared opMu the network cannot change: its operations
// hold opMu alone.
func (d *Driver) recheckNetwork(ctx context.Context, id string) error {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	n := d.networks[id] // its writers hold opMu alone
	if n == nil {
		return nil // deleted meanwhile
	}
	if err := d.cfg.Dataplane.EnsureBridge(ctx, toBridgeNetwork(n)); err != nil {
		return fmt.Errorf("recheck network %s: %w", model.Short(id), err)
	}
	return nil
}

// recheckEndpoint ensures a live endpoint's veth and anti-spoofing filter
// again, or drops it when its veth is gone, under its lock. An endpoint
// whose lock a call holds is being changed by that call, and the pass
// after verifies what the call changed (verify): it is left alone rather
// than waited for, which could take as long as a publish of many ports.
func (d *Driver) recheckEndpoint(ctx context.Context, id string) error {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	unlock, ok := d.epLocks.tryLock(id)
	if !ok {
		return nil
	}
	defer unlock()
	d.mapMu.RLock()
	e := d.endpoints[id]
	var rec state.Endpoint
	if e != nil {
		rec = *e
	}
	d.mapMu.RUnlock()
	if e == nil {
		return nil // deleted meanwhile
	}
	n := d.networks[rec.NetworkID]
	if n != nil {
		ep := toBridgeEndpoint(n, &rec)
		exists, err := d.cfg.Dataplane.EndpointExists(ep)
		if err != nil {
			return err
		}
		if exists {
			if err := d.cfg.Dataplane.EnsureEndpoint(ctx, ep); err != nil {
				return fmt.Errorf("recheck endpoint %s: %w", model.Short(id), err)
			}
			return nil
		}
	}
	d.touch("endpoint", id) // the drop is mynet's own change
	return d.dropStale(ctx, &rec, n)
}

// recheckRules ensures the rules of every network and the published ports
// of every endpoint, with one read and at most one transaction per family
// (EnsureRules). An endpoint's ports must not change while they are
// compared: a host port it unpublished and another endpoint published
// meanwhile would be written back for it, over the other's. So the
// endpoints that publish are held by their locks until the rules are
// written, and those a call holds now are left out (see recheckEndpoint);
// calls on endpoints without ports do not wait.
func (d *Driver) recheckRules(ctx context.Context) error {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	nets := make([]model.Network, 0, len(d.networks))
	d.mapMu.RLock()
	for _, n := range d.networks {
		nets = append(nets, toBridgeNetwork(n))
	}
	var publishing []string
	for id, e := range d.endpoints {
		if len(e.Ports) > 0 {
			publishing = append(publishing, id)
		}
	}
	d.mapMu.RUnlock()
	var unlocks []func()
	defer func() {
		for _, unlock := range unlocks {
			unlock()
		}
	}()
	var eps []model.Endpoint
	for _, id := range publishing {
		unlock, ok := d.epLocks.tryLock(id)
		if !ok {
			continue
		}
		unlocks = append(unlocks, unlock)
		d.mapMu.RLock()
		if e := d.endpoints[id]; e != nil && len(e.Ports) > 0 && d.networks[e.NetworkID] != nil {
			eps = append(eps, toBridgeEndpoint(d.networks[e.NetworkID], e))
		}
		d.mapMu.RUnlock()
	}
	added, err := d.cfg.Dataplane.EnsureRules(ctx, nets, eps)
	if err != nil {
		return fmt.Errorf("recheck rules: %w", err)
	}
	if len(added) > 0 {
		d.log.Info("firewall rules restored", "added", added, "networks", len(nets), "endpoints_with_ports", len(eps))
	}
	return nil
}

// adoptRecheck takes the fingerprints after the recheck's repairs and
// returns the orphans they show. It takes them in as the state of mynet's
// objects, as quickPass does, unless an endpoint call was under way (the
// fingerprints may hold half of its change), an endpoint's veth went
// meanwhile, there are orphans, or Docker's rules moved to another
// firewall backend (following it needs opMu alone): then the next pass
// compares with the fingerprints taken in before, and finds the recheck's
// repairs as changes to repair again, which costs ensures that find
// nothing to do.
func (d *Driver) adoptRecheck() (orphans []string, err error) {
	start := d.changes.Load()
	quiet := d.inflight.Load() == 0
	fp, sfp, err := d.fingerprints()
	if err != nil {
		return nil, err
	}
	if orphans = d.orphans(fp, sfp); len(orphans) > 0 {
		return orphans, nil
	}
	live, err := d.cfg.Dataplane.LiveEndpoints()
	if err != nil {
		return nil, err
	}
	quiet = quiet && d.inflight.Load() == 0 && d.changes.Load() == start
	if quiet && d.allLive(live) && fp[model.DigestFirewall] == d.fingerprint[model.DigestFirewall] {
		d.adopt(fp, sfp, start, true)
	}
	return nil, nil
}

// orphans returns the digest keys of objects tagged by mynet that the
// state does not know: links and rules of networks and endpoints, and
// anti-spoofing elements of veths. Not those of an endpoint being created
// (its record is not committed yet) or of objects a call changed since a
// pass last took the fingerprints in (an endpoint being deleted); a real
// orphan among those is found by the next recheck.
func (d *Driver) orphans(fp, sfp model.Digests) []string {
	known := map[string]bool{}
	d.mapMu.RLock()
	for id := range d.networks {
		known["net:"+id] = true
	}
	for _, n := range d.index {
		for id := range n.ids {
			host, _ := model.VethNames(id)
			known["ep:"+id], known["veth:"+host] = true, true
		}
	}
	for id, e := range d.endpoints {
		known["ep:"+id], known["veth:"+e.HostVeth] = true, true
	}
	d.mapMu.RUnlock()
	d.touchMu.Lock()
	for k := range d.touched {
		known[k] = true
	}
	d.touchMu.Unlock()
	var out []string
	for _, digests := range []model.Digests{fp, sfp} {
		for k := range digests {
			tagged := strings.HasPrefix(k, "net:") || strings.HasPrefix(k, "ep:") || strings.HasPrefix(k, "veth:")
			if tagged && !known[k] {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

// removeOrphans removes the objects tagged by mynet that the state does
// not know, under opMu alone: no call is creating or deleting one then.
// RemoveOrphans looks for them again itself. The fingerprints are then
// taken in as reconcile does.
func (d *Driver) removeOrphans(ctx context.Context, found []string) error {
	d.lockForPass(ctx)
	defer d.opMu.Unlock()
	keepNets, keepEps := map[string]bool{}, map[string]bool{}
	for id := range d.networks {
		keepNets[id] = true
	}
	for id := range d.endpoints {
		keepEps[id] = true
	}
	d.log.Info("removing objects tagged by mynet that its state does not know", "objects", found)
	if err := d.cfg.Dataplane.RemoveOrphans(ctx, keepNets, keepEps); err != nil {
		return err
	}
	fp, sfp, err := d.fingerprints()
	if err != nil || fp[model.DigestFirewall] != d.fingerprint[model.DigestFirewall] {
		return err // the next pass follows Docker's rules
	}
	return d.adoptOwnChanges(fp, sfp)
}
