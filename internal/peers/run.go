package peers

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/mynet/mynet/internal/cluster"
	"github.com/mynet/mynet/internal/model"
)

// storeTimeout bounds the agent's own store calls of one tick, below the
// interval, so that an unreachable store does not hold the resync up for
// long.
const storeTimeout = 4 * time.Second

// Run does the periodic work until ctx ends: the degraded check and the
// re-assertion of claims, the dead-host janitor, the resync of every
// network's entries, and the VTEP filter. When ctx ends it stops every
// watch and writes the pending local copies; the agent is then done.
func (a *Agent) Run(ctx context.Context) {
	defer a.shutdown()
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	a.tick(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.tick(ctx)
		case <-a.resync:
			a.resyncAll(ctx)
			a.syncFilter(ctx, true)
		case <-a.kick:
			a.syncFilter(ctx, false)
		}
	}
}

func (a *Agent) tick(ctx context.Context) {
	if a.checkStore(ctx) {
		a.janitor(ctx)
	}
	a.resyncAll(ctx)
	a.syncFilter(ctx, true)
}

// shutdown stops every watch, saving what is pending.
func (a *Agent) shutdown() {
	a.mu.Lock()
	a.cancel() // under mu: no AddNetwork starts a watch after this
	nets := a.nets
	a.nets = map[string]*network{}
	a.mu.Unlock()
	for _, nw := range nets {
		a.stop(nw, false)
	}
}

// resyncAll syncs every network whose wanted peers are known; a sync that
// changed something repaired entries changed from outside (or a write the
// watch could not make).
func (a *Agent) resyncAll(ctx context.Context) {
	for _, nw := range a.networks() {
		nw.mu.Lock()
		if !nw.known || nw.removed {
			nw.mu.Unlock()
			continue
		}
		broken := nw.broken
		changed := a.syncLocked(ctx, nw)
		nw.mu.Unlock()
		if changed > 0 && !broken {
			a.log.Info("cluster peer entries changed from outside; repaired", "network", nw.name, "entries", changed)
			if a.cfg.Metrics.Repairs != nil {
				a.cfg.Metrics.Repairs.Inc()
			}
		}
	}
}

// syncFilter lets the VXLAN port accept the VTEPs of the known hosts and
// of the wanted peers, and removes the filter with the last network. The
// hosts of the filter are all registered ones, dead or not: a host cut off
// from the store only still sends to this one, and its entries stay until
// the janitor frees it. force syncs an unchanged set too, repairing a
// flushed filter.
func (a *Agent) syncFilter(ctx context.Context, force bool) {
	vteps, active := a.vteps()
	a.mu.Lock()
	same := slices.Equal(vteps, a.filter) && !a.filterBad
	on := a.filterOn
	a.mu.Unlock()
	var err error
	switch {
	case !active && on:
		err = a.cfg.Dataplane.RemoveVTEPFilter(ctx)
		if err == nil {
			a.log.Info("VXLAN port filter removed: no cluster network left")
		}
	case !active, same && !force:
		return
	default:
		err = a.cfg.Dataplane.SyncVTEPFilter(ctx, a.cfg.Port, vteps)
		if err == nil && !same {
			a.log.Info("VXLAN port filter set", "port", a.cfg.Port, "vteps", len(vteps))
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.filterBad = err != nil
	if err != nil {
		a.log.Warn("VXLAN port filter not synced; retrying", "err", err)
		return
	}
	a.filter, a.filterOn = vteps, active
}

// vteps is the sorted set the filter accepts, and whether any cluster
// network is followed.
func (a *Agent) vteps() ([]netip.Addr, bool) {
	set := map[netip.Addr]bool{}
	a.mu.Lock()
	for _, h := range a.hosts {
		if h.ID != a.cfg.HostID && h.VTEP.IsValid() {
			set[h.VTEP.Unmap()] = true
		}
	}
	nets := make([]*network, 0, len(a.nets))
	for _, nw := range a.nets {
		nets = append(nets, nw)
	}
	a.mu.Unlock()
	for _, nw := range nets {
		nw.mu.Lock()
		for _, p := range nw.want {
			set[p.VTEP] = true
		}
		delete(set, nw.vx.Local.Unmap())
		nw.mu.Unlock()
	}
	out := make([]netip.Addr, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, len(nets) > 0
}

// checkStore tracks whether this host is cut off from the store and
// re-asserts its claims once it is back; it reports whether the store is
// up.
func (a *Agent) checkStore(ctx context.Context) bool {
	up := a.cfg.Registration == nil || a.cfg.Registration.Up()
	a.mu.Lock()
	was := a.degraded
	a.degraded = !up
	if was && up {
		a.reassert = true
	}
	pending := a.reassert
	a.mu.Unlock()
	switch {
	case !up && !was:
		a.log.Warn("cut off from the cluster store: degraded; entries stay, no claim is freed or re-asserted until it is back")
	case up && was:
		a.log.Info("the cluster store is reachable again; re-asserting this host's claims")
	}
	if up && pending {
		done := a.reassertClaims(ctx)
		a.mu.Lock()
		a.reassert = !done
		a.mu.Unlock()
	}
	return up
}

// reassertClaims claims again each address this host holds, with the
// held address as want: the store's claim is idempotent for its holder,
// so nothing changes where nothing was lost. A claim another host took
// meanwhile (freed as dead, then claimed) is reported and left to it. It
// reports false when the store failed, to try again at the next tick.
func (a *Agent) reassertClaims(ctx context.Context) bool {
	if a.cfg.LocalClaims == nil {
		return true
	}
	var lost []Conflict
	kept := 0
	for name, advs := range a.cfg.LocalClaims() {
		for _, adv := range advs {
			if adv.Host == "" {
				adv.Host = a.cfg.HostID
			}
			cctx, cancel := context.WithTimeout(ctx, storeTimeout)
			_, err := a.cfg.Store.ClaimAddress(cctx, name, adv.IP, adv)
			cancel()
			switch {
			case err == nil:
				kept++
			case errors.Is(err, cluster.ErrAddressInUse), errors.Is(err, cluster.ErrNetworkNotFound):
				lost = append(lost, Conflict{Network: name, IP: adv.IP, Endpoint: adv.Endpoint, Err: err.Error(), At: time.Now()})
				a.log.Error("a claim of this host was lost while cut off from the cluster store; the endpoint's address is another's now: remove the container and run it again",
					"network", name, "ip", adv.IP, "endpoint", model.Short(adv.Endpoint), "err", err)
			default:
				a.log.Warn("claims not re-asserted yet; retrying", "network", name, "err", err)
				return false
			}
		}
	}
	a.mu.Lock()
	a.conflicts = append(a.conflicts, lost...)
	a.mu.Unlock()
	a.log.Info("claims re-asserted", "kept", kept, "lost", len(lost))
	return true
}

// janitor frees the claims of hosts whose liveness key has been gone for
// longer than DeadGrace, as seen from here (a restart of this agent starts
// the wait again, which errs on the safe side).
func (a *Agent) janitor(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	hosts, err := a.cfg.Store.Hosts(cctx)
	cancel()
	if err != nil {
		a.log.Warn("cluster hosts not listed", "err", err)
		return
	}
	now := time.Now()
	var due []string
	a.mu.Lock()
	a.hosts, a.listed = hosts, now
	seen := map[string]bool{}
	for _, h := range hosts {
		seen[h.ID] = true
		since, dead := a.deadSince[h.ID]
		switch {
		case h.Alive || h.ID == a.cfg.HostID:
			delete(a.deadSince, h.ID)
		case !dead:
			a.deadSince[h.ID] = now
			a.log.Warn("cluster host is not alive; its claims are freed after the grace period", "host", h.ID, "vtep", h.VTEP, "grace", a.cfg.DeadGrace)
		case now.Sub(since) >= a.cfg.DeadGrace:
			due = append(due, h.ID)
		}
	}
	for id := range a.deadSince {
		if !seen[id] { // freed, by this host or another
			delete(a.deadSince, id)
		}
	}
	a.mu.Unlock()
	for _, id := range due {
		a.freeHost(ctx, id)
	}
}

func (a *Agent) freeHost(ctx context.Context, id string) {
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	n, err := a.cfg.Store.FreeDeadHost(cctx, id)
	switch {
	case errors.Is(err, cluster.ErrHostAlive):
		a.log.Info("cluster host came back before its claims were freed", "host", id)
	case err != nil:
		a.log.Warn("claims of a dead cluster host not freed; retrying", "host", id, "err", err)
		return
	default:
		a.log.Warn("freed the claims of a dead cluster host", "host", id, "claims", n, "grace", a.cfg.DeadGrace)
	}
	a.mu.Lock()
	delete(a.deadSince, id)
	a.mu.Unlock()
	a.kickFilter()
}
