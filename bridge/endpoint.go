package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// EnsureEndpoint makes the endpoint's veth pair exist with its host end on
// the bridge and up. DeleteEndpoint undoes it.
func (d *Dataplane) EnsureEndpoint(ctx context.Context, ep model.Endpoint) (retErr error) {
	log := d.log.With("network_id", model.Short(ep.NetworkID), "endpoint_id", model.Short(ep.ID))
	var undo netutil.Undo
	defer undo.Rollback(&retErr, log)
	what := "endpoint " + model.Short(ep.ID) + " on network " + model.Short(ep.NetworkID)
	if err := stopped(ctx, "creating veth "+ep.HostVeth+" of "+what); err != nil {
		return err
	}
	created, brIndex, err := d.ensureVeth(ep)
	if err != nil {
		return err
	}
	if created {
		undo.Push("delete veth "+ep.HostVeth, func() error { return d.removeLink(ep.HostVeth) })
	}
	if err := failpoint.Inject("bridge.endpoint.veth"); err != nil {
		return err
	}
	if err := stopped(ctx, "the anti-spoofing rules of "+what); err != nil {
		return err
	}
	if ep.AntiSpoofing {
		added, err := d.ensureSpoofCheck(ep)
		if err != nil {
			return err
		}
		if added { // else the veth was filtered before: keep it so
			undo.Push("delete anti-spoofing rules of "+ep.HostVeth, func() error { return d.RemoveSpoofCheck(ep) })
		}
	}
	if err := failpoint.Inject("bridge.endpoint.filter"); err != nil {
		return err
	}
	if created {
		// The address may have belonged to another container a moment
		// ago, whose flows and neighbour entry the janitor has not
		// flushed yet: wait for it here, before the new container has
		// flows of its own for the flush to cut. An address whose last
		// owner's flush ran (or that ForgetStale swept at startup) is
		// clean, and costs nothing. Then tell the neighbours the new MAC.
		if d.forgetPending(ep.Addresses) {
			d.Sync()
		}
		d.announceAddresses(ep, brIndex)
	}
	return nil
}

// DeleteEndpoint removes the endpoint's port rules and veth pair; both ends
// go with the host end. The container end may be in a sandbox or already
// gone with it. Conntrack entries of its addresses are flushed, so a reused
// address or port is not black-holed by a stale flow.
//
// Like DeleteNetwork, it checks ctx before each step.
func (d *Dataplane) DeleteEndpoint(ctx context.Context, ep model.Endpoint) error {
	var errs []error
	if len(ep.Ports) > 0 {
		errs = append(errs, d.RemovePorts(ctx, ep, ep.Ports))
	}
	if err := stopped(ctx, "removing veth "+ep.HostVeth); err != nil {
		errs = append(errs, err)
		return fmt.Errorf("delete endpoint %s on network %s: %w", model.Short(ep.ID), model.Short(ep.NetworkID), errors.Join(errs...))
	}
	errs = append(errs, d.RemoveSpoofCheck(ep))
	// The veth goes after the answer: deleting a netdev waits for an RCU
	// grace period (about 20 ms), which the built-in driver does not pay on
	// this path either (its veth goes with the sandbox's namespace). It is
	// queued by index: the same endpoint ID may come back before the
	// janitor runs, with a new veth of the same name. A crash before the
	// janitor runs leaves a tagged orphan for the reconcile. See reap.go
	// for how deletions are batched.
	if err := d.queueVeth(ep); err != nil {
		errs = append(errs, err)
	}
	d.forgetAddresses(ep)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete endpoint %s on network %s: %w", model.Short(ep.ID), model.Short(ep.NetworkID), err)
	}
	return nil
}

// EndpointExists reports whether the endpoint's host veth is present; after
// a reboot or a container's death it is not, and the endpoint is stale.
func (d *Dataplane) EndpointExists(ep model.Endpoint) (bool, error) {
	l, err := d.nl.LinkByName(ep.HostVeth)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up veth %s: %w", ep.HostVeth, err)
	}
	return l.Attrs().Alias == d.tag("ep", ep.ID), nil
}

// LiveEndpoints returns the IDs of the endpoints whose host veth exists
// with this instance's tag, from one link dump.
func (d *Dataplane) LiveEndpoints() (map[string]bool, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, l := range links {
		if kind, id, ok := d.parseTag(l.Attrs().Alias); ok && kind == "ep" {
			live[id] = true
		}
	}
	return live, nil
}
