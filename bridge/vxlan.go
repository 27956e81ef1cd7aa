package bridge

// The VXLAN device of a cluster network (issue 14): one per network and
// host, enslaved to the network's bridge, so that the bridge switches
// frames between local containers and the other hosts' as between ports.
//
// Layout (L2, like Docker's overlay, but in the host namespace on mynet's
// own bridge; see docs/multihost.md):
//
//	ip link add mnx<VNI> type vxlan id VNI local VTEP dstport PORT nolearning proxy
//	ip link set mnx<VNI> mtu UNDERLAY-50 master BRIDGE up
//	bridge fdb replace MAC dev mnx<VNI> dst REMOTE-VTEP self permanent   # per remote endpoint
//	ip neigh replace IP lladdr MAC dev mnx<VNI> nud permanent            # per remote address
//
// The device has no all-zero FDB entry: a frame with no entry for its
// destination MAC (a broadcast, an unknown unicast) is dropped, so no
// broadcast crosses hosts, ARP for the gateway stays on the local bridge,
// and every host's bridge can carry the same gateway address. ARP and
// neighbour solicitations for remote addresses are answered by the device
// itself from the neighbour entries (proxy, which the kernel only takes at
// creation). Learning is off: only the cluster store decides where a MAC
// lives.

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// EnsureVXLAN makes the network's VXLAN device exist as vx describes it,
// enslaved to the network's bridge and up. The network's MTU must be set
// and at most the device's (vx.MTU()): containers send frames of the
// bridge's MTU, and a larger one would be dropped at the device. A device
// of that name that is not this network's is a conflict; one that is but
// differs in what cannot be changed in place (local VTEP, port, learning,
// proxy) is created again, which drops its peer entries: the caller
// resyncs them (SyncPeers). On error, a device this call created is
// deleted again. RemoveVXLAN undoes it; DeleteNetwork does not (it knows
// no VNI), so a cluster network's delete calls RemoveVXLAN first, and the
// orphan sweep removes a device whose network is gone (it carries the
// network's tag).
func (d *Dataplane) EnsureVXLAN(ctx context.Context, n model.Network, vx model.VXLAN) (retErr error) {
	name := model.VXLANName(vx.VNI)
	if err := vxlanInputs(n, vx); err != nil {
		return err
	}
	log := d.log.With("network_id", model.Short(n.ID), "vxlan", name)
	var undo netutil.Undo
	defer undo.Rollback(&retErr, log)
	if err := stopped(ctx, "creating VXLAN "+name+" of network "+model.Short(n.ID)); err != nil {
		return err
	}
	br, err := d.networkBridge(n)
	if err != nil {
		return err
	}
	if br.Attrs().MTU > vx.MTU() {
		return fmt.Errorf("bridge %s of network %s has MTU %d, above the %d that VXLAN %d leaves of the underlay's %d; set the network's MTU to %d or less",
			n.Bridge, model.Short(n.ID), br.Attrs().MTU, vx.MTU(), vx.VNI, vx.UnderlayMTU, vx.MTU())
	}
	l, err := d.lookupVXLAN(n, vx)
	if err != nil {
		return err
	}
	if l == nil {
		if l, err = d.createVXLAN(n, vx, br.Attrs().Index); err != nil {
			return err
		}
		undo.Push("delete VXLAN "+name, func() error { return d.removeLink(name) })
		log.Debug("VXLAN created", "index", l.Attrs().Index, "vni", vx.VNI, "local", vx.Local, "port", vx.PortOrDefault())
	}
	if err := failpoint.Inject("bridge.vxlan.created"); err != nil {
		return err
	}
	if err := stopped(ctx, "setting up VXLAN "+name); err != nil {
		return err
	}
	return d.setUpVXLAN(l, vx, br)
}

// vxlanInputs refuses what EnsureVXLAN cannot build, before it touches
// anything.
func vxlanInputs(n model.Network, vx model.VXLAN) error {
	if err := vx.Validate(); err != nil {
		return fmt.Errorf("VXLAN of network %s: %w", model.Short(n.ID), err)
	}
	switch {
	case n.MTU == 0:
		return fmt.Errorf("network %s has no MTU set; a cluster network needs one of at most %d (underlay MTU %d minus the VXLAN encapsulation), or its containers send frames the underlay cannot carry",
			model.Short(n.ID), vx.MTU(), vx.UnderlayMTU)
	case n.MTU > vx.MTU():
		return fmt.Errorf("network %s has MTU %d, above the %d that VXLAN %d leaves of the underlay's %d; set com.docker.network.driver.mtu to %d or less",
			model.Short(n.ID), n.MTU, vx.MTU(), vx.VNI, vx.UnderlayMTU, vx.MTU())
	}
	return model.ValidateIfName(n.Bridge)
}

// networkBridge returns the network's bridge, which must be mynet's for n.
func (d *Dataplane) networkBridge(n model.Network) (netlink.Link, error) {
	br, err := d.nl.LinkByName(n.Bridge)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s of network %s: %w", n.Bridge, model.Short(n.ID), err)
	}
	if br.Type() != "bridge" || br.Attrs().Alias != d.tag(model.KindNetwork, n.ID) {
		return nil, fmt.Errorf("interface %s is not mynet's bridge for network %s (type %s, alias %q)", n.Bridge, model.Short(n.ID), br.Type(), br.Attrs().Alias)
	}
	return br, nil
}

// lookupVXLAN returns the network's VXLAN device when it exists as vx
// wants it, nil when it does not exist (or existed with settings that
// cannot be changed in place, and was deleted).
func (d *Dataplane) lookupVXLAN(n model.Network, vx model.VXLAN) (netlink.Link, error) {
	name := model.VXLANName(vx.VNI)
	l, err := d.nl.LinkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up VXLAN %s: %w", name, err)
	}
	if l.Attrs().Alias != d.tag(model.KindNetwork, n.ID) {
		return nil, fmt.Errorf("interface %s already exists and is not mynet's VXLAN device for network %s (type %s, alias %q); VNI %d is in use on this host",
			name, model.Short(n.ID), l.Type(), l.Attrs().Alias, vx.VNI)
	}
	if why := vxlanMismatch(l, vx); why != "" {
		// Local address, port, learning and proxy are fixed at creation
		// (the kernel refuses most changes of a running device, and
		// proxy is taken only then): make it again.
		d.log.Info("VXLAN device differs from its network's settings; creating it again", "vxlan", name, "network_id", model.Short(n.ID), "differs", why)
		if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("delete VXLAN %s to create it again (%s): %w", name, why, err)
		}
		return nil, nil
	}
	return l, nil
}

// vxlanMismatch names what in l differs from vx and cannot be changed in
// place; "" when nothing does.
func vxlanMismatch(l netlink.Link, vx model.VXLAN) string {
	v, ok := l.(*netlink.Vxlan)
	switch {
	case !ok:
		return "type " + l.Type()
	case v.VxlanId != int(vx.VNI):
		return fmt.Sprintf("VNI %d", v.VxlanId)
	case !v.SrcAddr.Equal(net.IP(vx.Local.AsSlice())):
		return fmt.Sprintf("local %s", v.SrcAddr)
	case v.Port != vx.PortOrDefault():
		return fmt.Sprintf("port %d", v.Port)
	case v.Learning:
		return "learning on"
	case !v.Proxy:
		return "proxy off"
	case v.L2miss || v.L3miss || v.FlowBased || v.Group != nil && !v.Group.IsUnspecified():
		return "miss notifications, external mode or a group"
	}
	return ""
}

// createVXLAN creates the device on the bridge at bridgeIndex and tags it
// as the network's. The kernel ignores the alias at creation (see
// addLink), so the tag is a second request; a device that cannot be
// tagged is deleted again.
func (d *Dataplane) createVXLAN(n model.Network, vx model.VXLAN, bridgeIndex int) (netlink.Link, error) {
	name := model.VXLANName(vx.VNI)
	spec := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: vx.MTU(), MasterIndex: bridgeIndex, TxQLen: -1},
		VxlanId:   int(vx.VNI), SrcAddr: net.IP(vx.Local.AsSlice()), Port: vx.PortOrDefault(),
		Learning: false, Proxy: true,
	}
	if err := d.nl.LinkAdd(spec); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create VXLAN %s for network %s: a device with VNI %d and port %d exists already on this host (another instance's?): %w",
				name, model.Short(n.ID), vx.VNI, vx.PortOrDefault(), err)
		}
		return nil, fmt.Errorf("create VXLAN %s (VNI %d, local %s, port %d) for network %s: %w", name, vx.VNI, vx.Local, vx.PortOrDefault(), model.Short(n.ID), err)
	}
	l, err := d.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up VXLAN %s after creating it: %w", name, err)
	}
	if err := d.nl.LinkSetAlias(l, d.tag(model.KindNetwork, n.ID)); err != nil {
		return nil, d.deleteNew(l, fmt.Errorf("tag VXLAN %s as mynet's: %w", name, err))
	}
	l.Attrs().Alias = d.tag(model.KindNetwork, n.ID)
	return l, nil
}

// setUpVXLAN gives an existing device its MTU and master, and sets it up.
func (d *Dataplane) setUpVXLAN(l netlink.Link, vx model.VXLAN, br netlink.Link) error {
	name := l.Attrs().Name
	if l.Attrs().MTU != vx.MTU() {
		if err := d.nl.LinkSetMTU(l, vx.MTU()); err != nil {
			return fmt.Errorf("set MTU %d on VXLAN %s: %w", vx.MTU(), name, err)
		}
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := d.nl.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach VXLAN %s to bridge %s: %w", name, br.Attrs().Name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("set VXLAN %s up: %w", name, err)
		}
	}
	return nil
}

// RemoveVXLAN deletes the network's VXLAN device, and with it its FDB and
// neighbour entries. A missing device, or one that is not this network's,
// is left alone and is no error.
func (d *Dataplane) RemoveVXLAN(ctx context.Context, n model.Network, vni uint32) error {
	name := model.VXLANName(vni)
	if err := stopped(ctx, "removing VXLAN "+name+" of network "+model.Short(n.ID)); err != nil {
		return err
	}
	if err := d.removeOwnedLink(name, d.tag(model.KindNetwork, n.ID)); err != nil {
		return fmt.Errorf("remove VXLAN of network %s: %w", model.Short(n.ID), err)
	}
	return nil
}

// vxlanDevice returns the network's VXLAN device, which must be mynet's
// for n.
func (d *Dataplane) vxlanDevice(n model.Network, vni uint32) (netlink.Link, error) {
	name := model.VXLANName(vni)
	l, err := d.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up VXLAN %s of network %s: %w", name, model.Short(n.ID), err)
	}
	if l.Type() != "vxlan" || l.Attrs().Alias != d.tag(model.KindNetwork, n.ID) {
		return nil, fmt.Errorf("interface %s is not mynet's VXLAN device for network %s (type %s, alias %q)", name, model.Short(n.ID), l.Type(), l.Attrs().Alias)
	}
	return l, nil
}
