package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// verify ensures again the networks and endpoints whose change the pass
// took in as mynet's own. A change from outside to the same object in the
// same interval (a bridge deleted right after its network was created) is
// in the digests that pass took in, so no comparison finds it. An
// endpoint is ensured while other endpoint calls go on, as CreateEndpoint
// does it; a network, which is rare, under opMu alone. The published
// ports of all of them are compared with one read of the ruleset
// (verifyPorts). The anti-spoofing filters are left to the recheck:
// re-applying them costs a netlink transaction per endpoint, after every
// container start.
func (d *Driver) verify(ctx context.Context) error {
	suspects := d.suspects
	d.suspects = nil
	var nets, eps []string
	for k := range suspects {
		if id, ok := strings.CutPrefix(k, "net:"); ok {
			nets = append(nets, id)
		} else if id, ok := strings.CutPrefix(k, "ep:"); ok {
			eps = append(eps, id)
		}
	}
	var errs []error
	if len(nets) > 0 {
		d.lockForPass(ctx)
		for _, id := range nets {
			if n := d.networks[id]; n != nil {
				if err := d.cfg.Dataplane.EnsureNetwork(ctx, toBridgeNetwork(n)); err != nil {
					errs = append(errs, fmt.Errorf("restore network %s: %w", model.Short(id), err))
				}
				errs = append(errs, d.ensureVXLAN(ctx, n))
				for _, e := range d.endpoints {
					if e.NetworkID == id {
						eps = append(eps, e.ID)
					}
				}
			}
		}
		d.opMu.Unlock()
	}
	if len(eps) > 0 {
		// A suspect network's endpoints may be suspects of their own.
		slices.Sort(eps)
		eps = slices.Compact(eps)
		d.opMu.RLock()
		var publishing []string
		for _, id := range eps {
			ports, err := d.verifyEndpoint(ctx, id)
			errs = append(errs, err)
			if ports {
				publishing = append(publishing, id)
			}
		}
		errs = append(errs, d.verifyPorts(ctx, publishing))
		d.opMu.RUnlock()
	}
	if err := errors.Join(errs...); err != nil {
		d.suspects = suspects // try again at the next pass
		return err
	}
	return nil
}

// verifyEndpoint ensures a live endpoint's veth again, under its endpoint
// lock and opMu shared, and reports whether it publishes ports.
func (d *Driver) verifyEndpoint(ctx context.Context, id string) (ports bool, err error) {
	defer d.epLocks.lock(id)()
	ep, _, ok := d.endpointModel(id)
	if !ok {
		return false, nil // deleted meanwhile
	}
	ep.AntiSpoofing = false
	if exists, err := d.cfg.Dataplane.EndpointExists(ep); err != nil || !exists {
		return false, err // a dead container's endpoint is the pass's to drop
	}
	if err := d.cfg.Dataplane.EnsureEndpoint(ctx, ep); err != nil {
		return false, fmt.Errorf("restore endpoint %s: %w", model.Short(id), err)
	}
	return len(ep.Ports) > 0, nil
}

// verifyPorts ensures the published ports of the endpoints ids with one
// read of the ruleset and at most one transaction per family
// (EnsureRules), instead of one read per endpoint: after a thousand
// containers started, that was a thousand reads of the whole nftables
// port map, twenty seconds of CPU. Each endpoint is held by its lock
// meanwhile, as recheckRules does; one that a call holds now is verified
// on its own after the others, waiting for its lock.
func (d *Driver) verifyPorts(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	var unlocks []func()
	defer func() {
		for _, unlock := range unlocks {
			unlock()
		}
	}()
	var nets []model.Network
	var eps []model.Endpoint
	var busy []string
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue // held already: tryLock would fail, and lock wait for ever
		}
		seen[id] = true
		unlock, ok := d.epLocks.tryLock(id)
		if !ok {
			busy = append(busy, id)
			continue
		}
		unlocks = append(unlocks, unlock)
		if ep, n, ok := d.endpointModel(id); ok && len(ep.Ports) > 0 {
			eps = append(eps, ep)
			if !seen["net:"+n.ID] {
				seen["net:"+n.ID] = true
				nets = append(nets, n)
			}
		}
	}
	var errs []error
	if _, err := d.cfg.Dataplane.EnsureRules(ctx, nets, eps); err != nil {
		errs = append(errs, fmt.Errorf("restore published ports of %d endpoints: %w", len(eps), err))
	}
	for _, id := range busy {
		errs = append(errs, d.verifyPortsOf(ctx, id))
	}
	return errors.Join(errs...)
}

// verifyPortsOf ensures one endpoint's published ports, under its lock.
func (d *Driver) verifyPortsOf(ctx context.Context, id string) error {
	defer d.epLocks.lock(id)()
	ep, n, ok := d.endpointModel(id)
	if !ok || len(ep.Ports) == 0 {
		return nil
	}
	if err := d.cfg.Dataplane.EnsurePorts(ctx, n, ep, ep.Ports); err != nil {
		return fmt.Errorf("restore published ports of endpoint %s: %w", model.Short(id), err)
	}
	return nil
}

// endpointModel is the endpoint id and its network as the dataplane takes
// them; ok is false when either is gone.
func (d *Driver) endpointModel(id string) (ep model.Endpoint, n model.Network, ok bool) {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	e := d.endpoints[id]
	var rec *state.Network
	if e != nil {
		rec = d.networks[e.NetworkID]
	}
	if rec == nil {
		return model.Endpoint{}, model.Network{}, false
	}
	return toBridgeEndpoint(rec, e), toBridgeNetwork(rec), true
}
