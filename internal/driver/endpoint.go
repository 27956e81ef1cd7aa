package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// Interface is what the engine asks of an endpoint's interface: addresses
// with their prefix length, and a MAC; each may be empty.
type Interface struct {
	Address, AddressIPv6, MacAddress string
}

// CreateEndpoint makes the veth pair. The engine has already allocated the
// address; mynet returns only the MAC, and only when the engine sent none
// (generatedMAC; empty otherwise): echoing a field the engine filled makes
// it roll the endpoint back.
//
// An address or MAC held by an endpoint whose container died is taken
// over. After dockerd crashes it starts --restart containers again with
// their --ip and --mac-address, and never deletes the old endpoints; their
// veths go only when the kernel has dismantled the old namespaces, so one
// created before the engine's last handshake is waited for, as ports are.
func (d *Driver) CreateEndpoint(ctx context.Context, networkID, endpointID string, iface Interface) (generatedMAC string, err error) {
	deadline := time.Now().Add(d.cfg.OwnerGoneWait)
	for {
		mac, err := d.createEndpoint(ctx, networkID, endpointID, iface)
		var held *heldError
		if !errors.As(err, &held) {
			return mac, err
		}
		dropped, derr := d.dropDead(ctx, held.networkID, held.owner)
		if derr != nil {
			d.log.Warn("could not drop an endpoint whose container died", "endpoint_id", model.Short(held.owner), "err", derr)
		}
		if time.Now().After(deadline) {
			return "", err
		}
		if dropped {
			continue
		}
		if held.created.IsZero() || !held.created.Before(d.activated().Truncate(time.Second)) {
			return "", err // being created, or by the running engine
		}
		select {
		case <-ctx.Done():
			return "", err
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
	d.log.Info("dropping an endpoint whose container died, for a new one with its address, MAC or host ports", "network_id", model.Short(n.ID), "endpoint_id", model.Short(id))
	if err := d.forgetEndpoint(e); err != nil {
		return false, err
	}
	d.changes.Add(1)
	return true, d.cfg.Dataplane.DeleteEndpoint(ctx, toBridgeEndpoint(n, e))
}

// forgetEndpoint deletes an endpoint's record and drops it from the maps;
// its kernel objects are the caller's to remove.
func (d *Driver) forgetEndpoint(e *state.Endpoint) error {
	if err := d.cfg.Store.DeleteEndpoint(e.NetworkID, e.ID); err != nil {
		return err
	}
	d.mapMu.Lock()
	delete(d.endpoints, e.ID)
	d.index.remove(e)
	d.mapMu.Unlock()
	return nil
}

// committed reports whether an endpoint exists and is not being created.
func (d *Driver) committed(id string) bool {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	return d.endpoints[id] != nil
}

func (d *Driver) createEndpoint(ctx context.Context, networkID, endpointID string, iface Interface) (string, error) {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(endpointID)()

	ep, n, existing, err := d.holdEndpoint(networkID, endpointID, iface)
	if err != nil || existing {
		return macAnswer(&ep), err
	}
	if n.Cluster != "" && len(n.IPv4) > 0 {
		if err := d.reclaimMAC(ctx, networkView{n.Cluster, n.IPv4[0].Pool}, ep.ID, ep.MAC, ep.IPv4); err != nil {
			d.mapMu.Lock()
			d.index.remove(&ep)
			d.mapMu.Unlock()
			return "", fmt.Errorf("create endpoint %s: %w", model.Short(ep.ID), err)
		}
	}
	// From here the endpoint holds its address and MAC in the index,
	// until it is committed or has failed.
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
		return "", fmt.Errorf("create endpoint %s on network %s: %w", model.Short(ep.ID), model.Short(n.ID), err)
	}
	d.mapMu.Lock()
	d.endpoints[ep.ID] = &ep
	committed = true
	d.mapMu.Unlock()
	return macAnswer(&ep), nil
}

// holdEndpoint builds a new endpoint's record and puts it in the index, or
// returns the existing endpoint of a retried request (existing); under
// mapMu.
func (d *Driver) holdEndpoint(networkID, endpointID string, iface Interface) (ep state.Endpoint, n *state.Network, existing bool, err error) {
	d.mapMu.Lock()
	defer d.mapMu.Unlock()
	n, ok := d.networks[networkID]
	if !ok {
		return ep, nil, false, fmt.Errorf("create endpoint %s: network %s: %w in mynet's state", model.Short(endpointID), model.Short(networkID), ErrNotFound)
	}
	if old, ok := d.endpoints[endpointID]; ok {
		if old.NetworkID != n.ID {
			return ep, n, false, BadRequestf("endpoint %s already exists on network %s", model.Short(old.ID), model.Short(old.NetworkID))
		}
		return *old, n, true, sameInterface(old, iface)
	}
	if ep, err = d.newEndpoint(n, endpointID, iface); err != nil {
		return ep, n, false, err
	}
	d.index.add(&ep)
	return ep, n, false, nil
}

// macAnswer is the MAC to answer CreateEndpoint with: the one mynet
// chose, or none.
func macAnswer(ep *state.Endpoint) string {
	if !ep.MACGenerated {
		return ""
	}
	return ep.MAC
}

// DeleteEndpoint removes the veth pair. Unknown endpoints succeed: after a
// plugin restart the engine may delete what mynet already cleaned up.
func (d *Driver) DeleteEndpoint(ctx context.Context, networkID, endpointID string) error {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(endpointID)()
	ep, n := d.lookup(endpointID)
	if ep == nil {
		d.log.Debug("delete of unknown endpoint", "endpoint_id", model.Short(endpointID))
		return nil
	}
	if ep.NetworkID != networkID {
		// Endpoint IDs are random: a request that pairs one with another
		// network is confused, and deleting on its word could cut off a
		// running container.
		return BadRequestf("endpoint %s is on network %s, not on the NetworkID %s of the request; nothing was deleted", model.Short(ep.ID), model.Short(ep.NetworkID), model.Short(networkID))
	}
	if err := d.forgetEndpoint(ep); err != nil {
		return err
	}
	d.touch("endpoint", ep.ID)
	if err := failpoint.Inject("endpoint.delete.record"); err != nil {
		return err
	}
	if n != nil { // a removal finishes: see handleRemoval
		return d.cfg.Dataplane.DeleteEndpoint(context.WithoutCancel(ctx), toBridgeEndpoint(n, ep))
	}
	return nil
}

// JoinInfo is what the engine needs to move an endpoint into its sandbox:
// the container end of the veth, the prefix of its name in the container,
// and the gateways (empty on an internal network, or without an address of
// the family).
type JoinInfo struct {
	ContainerVeth        string
	IfacePrefix          string
	Gateway, GatewayIPv6 string
}

// defaultIfacePrefix is the engine's own: containers see eth0, eth1...
const defaultIfacePrefix = "eth"

// Join hands the container end of the veth to the engine, which moves it
// into the sandbox and names it <prefix><N>. The gateway must be returned: an
// endpoint without one makes the engine add a docker_gwbridge interface.
func (d *Driver) Join(networkID, endpointID string) (JoinInfo, error) {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	ep, ok := d.endpoints[endpointID]
	if !ok || ep.NetworkID != networkID {
		return JoinInfo{}, fmt.Errorf("join endpoint %s: %w on network %s in mynet's state", model.Short(endpointID), ErrNotFound, model.Short(networkID))
	}
	n := d.networks[ep.NetworkID]
	info := JoinInfo{ContainerVeth: ep.ContainerVeth, IfacePrefix: n.IfacePrefix}
	if info.IfacePrefix == "" {
		info.IfacePrefix = defaultIfacePrefix
	}
	// An internal network has no way out, so no default route; the engine
	// adds no docker_gwbridge leg for internal networks either.
	if !n.Internal {
		info.Gateway = gatewayFor(ep.IPv4, n.IPv4)
		info.GatewayIPv6 = gatewayFor(ep.IPv6, n.IPv6)
	}
	return info, nil
}
