package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

// Cluster mode (issue 14): a network created with -o mynet.cluster=NAME is
// one network across hosts. Its spec and VNI live in the cluster store, its
// addresses are claimed there one by one, and a VXLAN device on its bridge
// carries the traffic to the other hosts. See docs/multihost.md.

// ClusterStore is the slice of internal/cluster.Store the driver uses.
type ClusterStore interface {
	CreateOrJoinNetwork(ctx context.Context, spec model.ClusterSpec, host string) (model.ClusterNetwork, error)
	LeaveNetwork(ctx context.Context, name, host string) (deleted bool, err error)
	ClaimAddress(ctx context.Context, network string, want netip.Addr, adv model.EndpointAdvert) (netip.Addr, error)
	ReleaseAddress(ctx context.Context, network string, a netip.Addr, host string) error
}

// ClusterPeers keeps the remote endpoints of cluster networks programmed.
type ClusterPeers interface {
	// AddNetwork starts (idempotently) keeping the network's remote endpoints
	// as FDB and neighbour entries on its VXLAN device, which the driver has
	// ensured; it programs from the local copy first, so it works with etcd down.
	AddNetwork(n model.Network, vx model.VXLAN, name string)
	// RemoveNetwork stops that and forgets the local copy (the device goes with the network).
	RemoveNetwork(name string)
}

// ClusterQueue persists the store deletes that could not be made when
// asked for; state.Store implements it.
type ClusterQueue interface {
	QueueClusterDelete(state.ClusterDelete) (uint64, error)
	ClusterDeletes() ([]state.ClusterDelete, error)
	DoneClusterDelete(seq uint64) error
}

// ClusterConfig turns cluster mode on (Config.Cluster).
type ClusterConfig struct {
	Store ClusterStore
	// Peers may be nil: then no remote endpoint is programmed.
	Peers  ClusterPeers
	HostID string
	// VXLAN is the template of every cluster network's device: VTEP,
	// port and underlay MTU; the VNI is filled in per network.
	VXLAN model.VXLAN
	// Queue keeps the deletes made while the store was unreachable.
	Queue ClusterQueue
	// JoinTimeout bounds a cluster create's store work (0: 10 s).
	JoinTimeout time.Duration
}

// ClusterMode reports whether the driver runs in cluster mode.
func (d *Driver) ClusterMode() bool { return d.cfg.Cluster != nil }

// clusterJoinTimeout bounds a cluster create's store work: the engine's
// user waits for it, and an unreachable store must fail it soon.
const clusterJoinTimeout = 10 * time.Second

// ClusterMAC is the MAC of a cluster endpoint whose engine sent none:
// 02:42 and the IPv4 address, as Docker derives it, so that every host can
// tell it from the address alone.
func ClusterMAC(a netip.Addr) string {
	if !a.Is4() {
		return ""
	}
	b := a.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}.String()
}

// clusterSpec checks a cluster network's request and returns its spec;
// under opMu. Phase one: IPv4 only, one subnet, of mynet's IPAM, given
// explicitly so that every host can give the same one.
func (d *Driver) clusterSpec(cfg NetworkConfig) (model.ClusterSpec, error) {
	spec := model.ClusterSpec{Name: cfg.Cluster, Internal: cfg.Internal, ICC: cfg.ICC, MTU: cfg.MTU}
	name := cfg.Cluster
	switch {
	case d.cfg.Cluster == nil:
		return spec, BadRequestf("option mynet.cluster=%s needs cluster mode: start mynet serve with --cluster-store etcd://HOST:2379 and --vtep-addr", name)
	case cfg.EnableIPv6 || len(cfg.IPv6) > 0 || !cfg.EnableIPv4:
		return spec, BadRequestf("cluster network %s: cluster networks are IPv4 only for now; leave --ipv6 off and --ipv4 on", name)
	case len(cfg.IPv4) != 1:
		return spec, BadRequestf("cluster network %s has %d IPv4 subnets; a cluster network has exactly one: give one --subnet, the same on every host", name, len(cfg.IPv4))
	}
	if vx := d.cfg.Cluster.VXLAN; cfg.MTU > vx.MTU() {
		return spec, BadRequestf("cluster network %s: MTU %d is above the %d VXLAN leaves of the underlay's %d; set com.docker.network.driver.mtu to %d or less",
			name, cfg.MTU, vx.MTU(), vx.UnderlayMTU, vx.MTU())
	}
	s := cfg.IPv4[0]
	spec.Subnet = s.Pool
	if s.Gateway.IsValid() {
		spec.Gateway = s.Gateway.Addr()
	}
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	p := d.pools[s.Pool.String()]
	switch {
	case p == nil:
		return spec, BadRequestf("cluster network %s needs mynet's IPAM: add --ipam-driver mynet --subnet %s", name, s.Pool)
	case !p.explicit:
		return spec, BadRequestf("cluster network %s needs an explicit subnet, the same on every host: add --subnet (e.g. --subnet %s)", name, s.Pool)
	case p.rec.Range != "":
		spec.IPRange = netip.MustParsePrefix(p.rec.Range)
	}
	for _, n := range d.networks {
		if n.Cluster == name && n.ID != cfg.ID {
			return spec, BadRequestf("cluster network %s already exists on this host as network %s; remove it first, or choose another mynet.cluster name", name, model.Short(n.ID))
		}
	}
	return spec, nil
}

// joinCluster creates or joins the cluster network of rec (which it gives
// its VNI) and returns its VXLAN device. A join whose outcome is unknown
// (the store did not answer in time) is undone by a queued leave.
func (d *Driver) joinCluster(ctx context.Context, cfg NetworkConfig, rec *state.Network) (model.VXLAN, error) {
	spec, err := d.clusterSpec(cfg)
	if err != nil {
		return model.VXLAN{}, err
	}
	cl := d.cfg.Cluster
	bound := cl.JoinTimeout
	if bound <= 0 {
		bound = clusterJoinTimeout
	}
	jctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	cn, err := cl.Store.CreateOrJoinNetwork(jctx, spec, cl.HostID)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && cl.Queue != nil {
			// Queued, not tried: the answer is due now.
			d.enqueue(state.ClusterDelete{Op: state.OpLeave, Network: spec.Name, Host: cl.HostID})
		}
		return model.VXLAN{}, fmt.Errorf("join cluster network %s: %w", spec.Name, err)
	}
	rec.VNI = cn.VNI
	return d.vxlanOf(rec), nil
}

// vxlanOf is a cluster network's VXLAN device on this host.
func (d *Driver) vxlanOf(n *state.Network) model.VXLAN {
	vx := d.cfg.Cluster.VXLAN
	vx.VNI = n.VNI
	return vx
}

// clusterEnsure wraps a cluster network's ensure and remove steps with its
// VXLAN device. The ensure undoes its own steps when the device fails.
func (d *Driver) clusterEnsure(ctx context.Context, rec *state.Network, vx model.VXLAN) (ensure, remove func() error) {
	bg := context.WithoutCancel(ctx)
	ensure = func() error {
		if err := d.cfg.Dataplane.EnsureNetwork(ctx, toBridgeNetwork(rec)); err != nil {
			return err
		}
		if err := d.cfg.Dataplane.EnsureVXLAN(ctx, toBridgeNetwork(rec), vx); err != nil {
			return errors.Join(err, d.cfg.Dataplane.DeleteNetwork(bg, toBridgeNetwork(rec)))
		}
		return nil
	}
	remove = func() error {
		return errors.Join(d.cfg.Dataplane.RemoveVXLAN(bg, toBridgeNetwork(rec), vx.VNI),
			d.cfg.Dataplane.DeleteNetwork(bg, toBridgeNetwork(rec)))
	}
	return ensure, remove
}

// ensureVXLAN makes a restored or damaged cluster network's VXLAN device
// exist again; without cluster mode it cannot (no VTEP) and leaves it.
func (d *Driver) ensureVXLAN(ctx context.Context, n *state.Network) error {
	if n.VNI == 0 || d.cfg.Cluster == nil {
		return nil
	}
	if err := d.cfg.Dataplane.EnsureVXLAN(ctx, toBridgeNetwork(n), d.vxlanOf(n)); err != nil {
		return fmt.Errorf("restore VXLAN of cluster network %s (%s): %w", n.Cluster, model.Short(n.ID), err)
	}
	// A device made again has no peer entries: have the agent write them
	// now rather than at its next periodic resync.
	if r, ok := d.cfg.Cluster.Peers.(interface{ Resync() }); ok {
		r.Resync()
	}
	return nil
}

// addPeers hands a cluster network to the peers agent, if there is one.
func (d *Driver) addPeers(n *state.Network) {
	if n.Cluster == "" || d.cfg.Cluster == nil || d.cfg.Cluster.Peers == nil {
		return
	}
	d.cfg.Cluster.Peers.AddNetwork(toBridgeNetwork(n), d.vxlanOf(n), n.Cluster)
}

// removeClusterNetwork undoes a deleted cluster network's cluster side:
// its peers, its VXLAN device, and its membership (queued if the store
// cannot be reached). The record is gone already.
func (d *Driver) removeClusterNetwork(ctx context.Context, n *state.Network) error {
	if n.Cluster == "" {
		return nil
	}
	if d.cfg.Cluster != nil && d.cfg.Cluster.Peers != nil {
		d.cfg.Cluster.Peers.RemoveNetwork(n.Cluster)
	}
	return d.cfg.Dataplane.RemoveVXLAN(ctx, toBridgeNetwork(n), n.VNI)
}

// ClusterClaims returns this host's address claims by cluster network
// name, from the local state, for the peers agent to re-assert after a
// partition. The MAC is the endpoint's when it exists, else the one the
// engine asked for the address with, else the derived one.
func (d *Driver) ClusterClaims() map[string][]model.EndpointAdvert {
	out := map[string][]model.EndpointAdvert{}
	if d.cfg.Cluster == nil {
		return out
	}
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	byIP := map[netip.Addr]*state.Endpoint{}
	for _, e := range d.endpoints {
		if p, err := netip.ParsePrefix(e.IPv4); err == nil {
			if n := d.networks[e.NetworkID]; n != nil && n.Cluster != "" {
				byIP[p.Addr()] = e
			}
		}
	}
	d.ipamMu.Lock()
	defer d.ipamMu.Unlock()
	for _, n := range d.networks {
		if n.Cluster == "" || len(n.IPv4) == 0 {
			continue
		}
		out[n.Cluster] = d.poolClaims(n, byIP)
	}
	return out
}

// poolClaims lists the claims of a cluster network's pool; under mapMu
// and ipamMu.
func (d *Driver) poolClaims(n *state.Network, byIP map[netip.Addr]*state.Endpoint) []model.EndpointAdvert {
	claims := []model.EndpointAdvert{}
	p := d.pools[n.IPv4[0].Pool]
	if p == nil {
		return claims
	}
	for _, a := range p.Used() {
		if a.String() == p.rec.Gateway {
			continue
		}
		adv := model.EndpointAdvert{Host: d.cfg.Cluster.HostID, IP: a, VTEP: d.cfg.Cluster.VXLAN.Local, MAC: p.OwnerOf(a)}
		if e := byIP[a]; e != nil && e.NetworkID == n.ID {
			adv.MAC, adv.Endpoint = e.MAC, e.ID
		}
		if adv.MAC == "" {
			adv.MAC = ClusterMAC(a)
		}
		claims = append(claims, adv)
	}
	return claims
}

// restorePeers hands the restored cluster networks to the peers agent,
// which programs them from its local copy even with the store down; under
// opMu.
func (d *Driver) restorePeers() {
	for _, n := range d.networks {
		if n.Cluster == "" {
			continue
		}
		if d.cfg.Cluster == nil {
			d.log.Warn("cluster network restored without cluster mode: it reaches no other host; start mynet serve with --cluster-store",
				"network_id", model.Short(n.ID), "cluster", n.Cluster)
			continue
		}
		d.addPeers(n)
	}
}

// undoClusterJoin queues the leave of a cluster network whose create a
// crash interrupted: at startup, without waiting for the store.
func (d *Driver) undoClusterJoin(n *state.Network) {
	if n.Cluster == "" || n.VNI == 0 || d.cfg.Cluster == nil || d.cfg.Cluster.Queue == nil {
		return
	}
	d.enqueue(state.ClusterDelete{Op: state.OpLeave, Network: n.Cluster, Host: d.cfg.Cluster.HostID})
}
