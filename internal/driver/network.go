package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// GatewayNATUnprotected is gateway mode nat-unprotected: containers'
// addresses are not protected from being routed to from outside the host.
const GatewayNATUnprotected = "nat-unprotected"

// GatewayRouted is gateway mode routed: no NAT for the family; published
// container ports are opened at the containers' addresses instead.
const GatewayRouted = "routed"

// GatewayIsolated is gateway mode isolated, for internal networks only:
// the bridge has no address of the family, so the containers have no way
// to the host in it, only to each other.
const GatewayIsolated = "isolated"

// OptBridgeName is the -o key that names the bridge; errors name it.
const OptBridgeName = "com.docker.network.bridge.name"

// NetworkConfig is a CreateNetwork request parsed and validated: nothing
// here reads Docker's option maps.
type NetworkConfig struct {
	ID         string
	BridgeName string
	MTU        int
	// EnableIPv4 is false for an IPv6-only network (Docker 28's
	// --ipv4=false), which then has no IPv4 subnet.
	EnableIPv4   bool
	EnableIPv6   bool
	Internal     bool
	ICC          bool
	Masquerade   bool
	HostBinding  netip.Addr // invalid: all host addresses
	AntiSpoofing bool
	IfacePrefix  string // "": the engine's default, eth
	// GatewayMode4 and GatewayMode6 are "" (nat), GatewayNATUnprotected
	// or GatewayRouted or GatewayIsolated.
	GatewayMode4 string
	GatewayMode6 string
	// TrustedInterfaces are trusted_host_interfaces (nil: none).
	TrustedInterfaces []string
	// InhibitIPv4 leaves the bridge without its IPv4 address.
	InhibitIPv4 bool
	IPv4        []SubnetConfig
	IPv6        []SubnetConfig
	// Cluster is the cluster network's name (mynet.cluster); "" for a
	// single-host network.
	Cluster string
}

// SubnetConfig is one IPAM entry of the request.
type SubnetConfig struct {
	Pool    netip.Prefix
	Gateway netip.Prefix // invalid when the IPAM driver gave none
}

// CreateNetwork builds the bridge and its rules. A repeat of a request that
// already succeeded (the engine retries after transport errors) succeeds
// without changes; a different request for the same ID is refused.
func (d *Driver) CreateNetwork(ctx context.Context, cfg NetworkConfig) error {
	rec := state.Network{
		ID: cfg.ID, Bridge: cfg.BridgeName, MTU: cfg.MTU,
		IPv4: fromSubnets(cfg.IPv4), IPv6: fromSubnets(cfg.IPv6), Created: now(),
		ICC: cfg.ICC, Masquerade: cfg.Masquerade, Internal: cfg.Internal, AntiSpoofing: cfg.AntiSpoofing,
		IfacePrefix: cfg.IfacePrefix, GatewayMode4: cfg.GatewayMode4, GatewayMode6: cfg.GatewayMode6,
		TrustedInterfaces: cfg.TrustedInterfaces,
		InhibitIPv4:       cfg.InhibitIPv4,
		Cluster:           cfg.Cluster,
	}
	if cfg.HostBinding.IsValid() {
		rec.HostBinding = cfg.HostBinding.String()
	}
	if cfg.Cluster != "" && rec.MTU == 0 && d.cfg.Cluster != nil {
		// The most the underlay carries: each host's own, so the spec
		// keeps the MTU the user gave (none).
		rec.MTU = d.cfg.Cluster.VXLAN.MTU()
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if done, err := d.checkNewNetwork(rec); err != nil || done {
		return err
	}
	// A rollback runs to its end, also after the deadline that caused it.
	bg := context.WithoutCancel(ctx)
	ensure := func() error { return d.cfg.Dataplane.EnsureNetwork(ctx, toBridgeNetwork(&rec)) }
	remove := func() error { return d.cfg.Dataplane.DeleteNetwork(bg, toBridgeNetwork(&rec)) }
	if cfg.Cluster != "" {
		vx, err := d.joinCluster(ctx, cfg, &rec)
		if err != nil {
			return fmt.Errorf("create network %s: %w", model.Short(rec.ID), err)
		}
		ensure, remove = d.clusterEnsure(ctx, &rec, vx)
	}
	if err := d.commitCreate(ctx, "network", rec.ID,
		func(pending bool) error { rec.Pending = pending; return d.cfg.Store.PutNetwork(rec) },
		func() error { return d.cfg.Store.DeleteNetwork(rec.ID) },
		ensure, remove,
	); err != nil {
		if cfg.Cluster != "" {
			d.leaveCluster(bg, cfg.Cluster)
		}
		return fmt.Errorf("create network %s: %w", model.Short(rec.ID), err)
	}
	d.mapMu.Lock()
	d.networks[rec.ID] = &rec
	d.mapMu.Unlock()
	d.linkPools(rec)
	d.addPeers(&rec)
	return nil
}

// checkNewNetwork refuses a network whose ID or bridge is taken, and
// reports a repeat of a create that succeeded as done. Under opMu.
func (d *Driver) checkNewNetwork(rec state.Network) (done bool, err error) {
	if old, ok := d.networks[rec.ID]; ok {
		old := *old
		old.Created, old.VNI = rec.Created, 0 // the store gave the VNI
		if reflect.DeepEqual(old, rec) {
			return true, nil
		}
		return false, BadRequestf("network %s already exists with a different configuration", model.Short(rec.ID))
	}
	for _, n := range d.networks {
		if n.Bridge == rec.Bridge {
			return false, BadRequestf("bridge name %s is already used by mynet network %s; choose another %s", rec.Bridge, model.Short(n.ID), OptBridgeName)
		}
	}
	return false, nil
}

// linkPools records which network uses which of mynet's IPAM pools, so that
// overlap errors can name it. Pools of other IPAM drivers are not ours.
func (d *Driver) linkPools(n state.Network) {
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	for _, s := range append(append([]state.Subnet(nil), n.IPv4...), n.IPv6...) {
		p := d.pools[s.Pool]
		if p == nil {
			continue
		}
		p.cluster = n.Cluster
		if p.rec.NetworkID != "" {
			continue
		}
		p.rec.NetworkID = n.ID
		if err := d.cfg.Store.PutPool(p.rec); err != nil {
			d.log.Warn("could not record the network of a pool", "pool_id", p.rec.ID, "err", err)
		}
	}
}

// DeleteNetwork removes the network. The record goes first: if removing a
// kernel object then fails, the object is an orphan that the reconcile
// removes, rather than a record that would resurrect the network.
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	n, ok := d.networks[id]
	if !ok {
		d.log.Debug("delete of unknown network", "network_id", model.Short(id))
		return nil
	}
	// The engine refuses to remove a network with active endpoints, so any
	// left here are stale (their DeleteEndpoint never came): remove them.
	var stale []*state.Endpoint
	for _, e := range d.endpoints {
		if e.NetworkID == n.ID {
			stale = append(stale, e)
		}
	}
	if err := d.cfg.Store.DeleteNetwork(n.ID); err != nil {
		return err
	}
	d.mapMu.Lock()
	delete(d.networks, n.ID)
	for _, e := range stale {
		delete(d.endpoints, e.ID)
		d.index.remove(e)
	}
	d.mapMu.Unlock()
	d.touch("network", n.ID)
	for _, e := range stale {
		d.touch("endpoint", e.ID)
	}
	if err := failpoint.Inject("network.delete.record"); err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx) // a removal finishes: see handleRemoval
	var errs []error
	for _, e := range stale {
		errs = append(errs, d.cfg.Dataplane.DeleteEndpoint(ctx, toBridgeEndpoint(n, e)))
	}
	errs = append(errs, d.removeClusterNetwork(ctx, n))
	errs = append(errs, d.cfg.Dataplane.DeleteNetwork(ctx, toBridgeNetwork(n)))
	if n.Cluster != "" {
		d.leaveCluster(ctx, n.Cluster)
	}
	return errors.Join(errs...)
}

func fromSubnets(in []SubnetConfig) []state.Subnet {
	var out []state.Subnet // nil when empty, as a record loaded from JSON
	for _, s := range in {
		ss := state.Subnet{Pool: s.Pool.String()}
		if s.Gateway.IsValid() {
			ss.Gateway = s.Gateway.String()
		}
		out = append(out, ss)
	}
	return out
}
