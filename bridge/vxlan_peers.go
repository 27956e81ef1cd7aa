package bridge

// The entries of remote endpoints on a cluster network's VXLAN device: a
// permanent FDB entry MAC -> VTEP (NTF_SELF: the device's own table, not
// the bridge's) and a permanent neighbour entry IP -> MAC, which the
// device answers ARP and neighbour solicitations from (proxy).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

// fdbEntry is a permanent entry of the device's FDB.
type fdbEntry struct {
	mac  string // net.HardwareAddr.String()
	vtep netip.Addr
}

// VXLANEntries is what a VXLAN device holds, as read back from the kernel:
// its permanent FDB entries (MAC -> VTEP) and neighbour entries (IP ->
// MAC), for the doctor and the reconcile to compare with the cluster store.
type VXLANEntries struct {
	FDB   map[string]netip.Addr // MAC (lowercase, colons) -> VTEP
	Neigh map[netip.Addr]string // IP -> MAC
}

// Peers are the peers whose entries are both present and agree.
func (e VXLANEntries) Peers() []model.VXLANPeer {
	var out []model.VXLANPeer
	for ip, mac := range e.Neigh {
		vtep, ok := e.FDB[mac]
		if !ok {
			continue
		}
		hw, _ := net.ParseMAC(mac)
		out = append(out, model.VXLANPeer{IP: ip, MAC: hw, VTEP: vtep})
	}
	slices.SortFunc(out, func(a, b model.VXLANPeer) int { return a.IP.Compare(b.IP) })
	return out
}

// Missing lists the peers of want whose entries the device lacks or holds
// otherwise: what a reconcile must write, what a doctor reports.
func (e VXLANEntries) Missing(want []model.VXLANPeer) []model.VXLANPeer {
	var out []model.VXLANPeer
	for _, p := range want {
		mac := p.MAC.String()
		if e.Neigh[p.IP.Unmap()] != mac || e.FDB[mac] != p.VTEP.Unmap() {
			out = append(out, p)
		}
	}
	return out
}

// VXLANEntries reads the permanent entries of the network's VXLAN device:
// one FDB dump and one neighbour dump.
func (d *Dataplane) VXLANEntries(ctx context.Context, n model.Network, vni uint32) (VXLANEntries, error) {
	if err := stopped(ctx, "reading the entries of VXLAN "+model.VXLANName(vni)); err != nil {
		return VXLANEntries{}, err
	}
	l, err := d.vxlanDevice(n, vni)
	if err != nil {
		return VXLANEntries{}, err
	}
	return d.readVXLAN(l)
}

func (d *Dataplane) readVXLAN(l netlink.Link) (VXLANEntries, error) {
	e := VXLANEntries{FDB: map[string]netip.Addr{}, Neigh: map[netip.Addr]string{}}
	index, name := l.Attrs().Index, l.Attrs().Name
	fdb, err := retryDump(func() ([]netlink.Neigh, error) { return d.nl.NeighList(index, unix.AF_BRIDGE) })
	if err != nil {
		return e, fmt.Errorf("list the FDB of VXLAN %s: %w", name, err)
	}
	for _, f := range fdb {
		// The dump also has the bridge's entries for this port (NTF_MASTER:
		// its own MAC, MACs it learned); the device's own have a
		// destination.
		vtep, ok := netip.AddrFromSlice(f.IP)
		if f.Flags&netlink.NTF_SELF == 0 || f.State&netlink.NUD_PERMANENT == 0 || !ok || len(f.HardwareAddr) != 6 {
			continue
		}
		e.FDB[f.HardwareAddr.String()] = vtep.Unmap()
	}
	neigh, err := retryDump(func() ([]netlink.Neigh, error) { return d.nl.NeighList(index, netlink.FAMILY_ALL) })
	if err != nil {
		return e, fmt.Errorf("list the neighbours of VXLAN %s: %w", name, err)
	}
	for _, nb := range neigh {
		ip, ok := netip.AddrFromSlice(nb.IP)
		if nb.Family == unix.AF_BRIDGE || nb.State&netlink.NUD_PERMANENT == 0 || !ok || len(nb.HardwareAddr) != 6 {
			continue
		}
		e.Neigh[ip.Unmap()] = nb.HardwareAddr.String()
	}
	return e, nil
}

// EnsurePeer writes the peer's FDB and neighbour entries on the network's
// VXLAN device, replacing whatever entries the MAC and the IP had (an
// endpoint that moved to another host, an address given to another
// endpoint). Repeating it changes nothing.
func (d *Dataplane) EnsurePeer(ctx context.Context, n model.Network, vni uint32, p model.VXLANPeer) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("peer of network %s: %w", model.Short(n.ID), err)
	}
	if err := stopped(ctx, "adding peer "+p.IP.String()+" to VXLAN "+model.VXLANName(vni)); err != nil {
		return err
	}
	l, err := d.vxlanDevice(n, vni)
	if err != nil {
		return err
	}
	return d.writePeer(l.Attrs().Index, p)
}

// writePeer replaces the FDB entry first: a neighbour entry whose MAC the
// device cannot reach yet would let ARP answers lead containers nowhere.
// Equivalent to: bridge fdb replace MAC dev VX dst VTEP self permanent;
// ip neigh replace IP lladdr MAC dev VX nud permanent.
func (d *Dataplane) writePeer(index int, p model.VXLANPeer) error {
	if err := d.nl.NeighSet(fdbNeigh(index, p.MAC, p.VTEP)); err != nil {
		return fmt.Errorf("add FDB entry %s -> %s: %w", p.MAC, p.VTEP, err)
	}
	if err := d.nl.NeighSet(ipNeigh(index, p.IP, p.MAC)); err != nil {
		return fmt.Errorf("add neighbour entry %s -> %s: %w", p.IP, p.MAC, err)
	}
	return nil
}

// RemovePeer deletes the peer's entries: its neighbour entry, and its FDB
// entry unless another neighbour entry of the device still names its MAC
// (the endpoint's other address: IPv4 and IPv6). Missing entries, or a
// missing device, are no error.
func (d *Dataplane) RemovePeer(ctx context.Context, n model.Network, vni uint32, p model.VXLANPeer) error {
	if err := stopped(ctx, "removing peer "+p.IP.String()+" from VXLAN "+model.VXLANName(vni)); err != nil {
		return err
	}
	l, err := d.vxlanDevice(n, vni)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	have, err := d.readVXLAN(l)
	if err != nil {
		return err
	}
	mac := p.MAC.String()
	var errs []error
	if have.Neigh[p.IP.Unmap()] == mac {
		errs = append(errs, d.deleteNeigh(ipNeigh(l.Attrs().Index, p.IP, p.MAC)))
		delete(have.Neigh, p.IP.Unmap())
	}
	if _, ok := have.FDB[mac]; ok && !slices.Contains(slices.Collect(maps.Values(have.Neigh)), mac) {
		errs = append(errs, d.deleteNeigh(fdbNeigh(l.Attrs().Index, p.MAC, have.FDB[mac])))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove peer %s from VXLAN %s of network %s: %w", p, l.Attrs().Name, model.Short(n.ID), err)
	}
	return nil
}

// SyncPeers makes the device's entries exactly want's: it reads both
// tables once, adds or replaces what is missing or differs and deletes the
// entries no peer names, so that a relist of the cluster store after a
// watch was compacted costs two dumps and one request per change. It
// returns how many entries it wrote and deleted.
func (d *Dataplane) SyncPeers(ctx context.Context, n model.Network, vni uint32, want []model.VXLANPeer) (written, deleted int, err error) {
	for _, p := range want {
		if err := p.Validate(); err != nil {
			return 0, 0, fmt.Errorf("peers of network %s: %w", model.Short(n.ID), err)
		}
	}
	if err := stopped(ctx, "syncing the peers of VXLAN "+model.VXLANName(vni)); err != nil {
		return 0, 0, err
	}
	l, err := d.vxlanDevice(n, vni)
	if err != nil {
		return 0, 0, err
	}
	have, err := d.readVXLAN(l)
	if err != nil {
		return 0, 0, err
	}
	plan, err := planPeers(have, want)
	if err != nil {
		return 0, 0, fmt.Errorf("peers of network %s: %w", model.Short(n.ID), err)
	}
	index := l.Attrs().Index
	var errs []error
	// Stale neighbours first, stale FDB entries last: at no point does a
	// neighbour entry lead to a MAC the device cannot reach.
	for _, ip := range plan.neighDel {
		errs = append(errs, d.deleteNeigh(&netlink.Neigh{LinkIndex: index, Family: family(ip), IP: ip.AsSlice()}))
		deleted++
	}
	for _, f := range plan.fdbSet {
		mac, _ := net.ParseMAC(f.mac)
		if err := d.nl.NeighSet(fdbNeigh(index, mac, f.vtep)); err != nil {
			errs = append(errs, fmt.Errorf("add FDB entry %s -> %s: %w", f.mac, f.vtep, err))
		}
		written++
	}
	for _, p := range plan.neighSet {
		if err := d.nl.NeighSet(ipNeigh(index, p.IP, p.MAC)); err != nil {
			errs = append(errs, fmt.Errorf("add neighbour entry %s -> %s: %w", p.IP, p.MAC, err))
		}
		written++
	}
	for _, f := range plan.fdbDel {
		mac, _ := net.ParseMAC(f.mac)
		errs = append(errs, d.deleteNeigh(fdbNeigh(index, mac, f.vtep)))
		deleted++
	}
	if err := errors.Join(errs...); err != nil {
		return written, deleted, fmt.Errorf("sync the peers of VXLAN %s of network %s: %w", l.Attrs().Name, model.Short(n.ID), err)
	}
	if written+deleted > 0 {
		d.log.Debug("VXLAN peers synced", "vxlan", l.Attrs().Name, "peers", len(want), "written", written, "deleted", deleted)
	}
	return written, deleted, nil
}

// peerPlan is what SyncPeers changes.
type peerPlan struct {
	fdbSet, fdbDel []fdbEntry
	neighSet       []model.VXLANPeer
	neighDel       []netip.Addr
}

// planPeers compares the device's entries with want. Two peers giving one
// MAC two VTEPs, or one IP two MACs, contradict each other: the store is
// inconsistent, and writing either would hide it.
func planPeers(have VXLANEntries, want []model.VXLANPeer) (peerPlan, error) {
	var plan peerPlan
	fdb := map[string]netip.Addr{}
	neigh := map[netip.Addr]string{}
	for _, p := range want {
		mac, ip, vtep := p.MAC.String(), p.IP.Unmap(), p.VTEP.Unmap()
		if v, ok := fdb[mac]; ok && v != vtep {
			return plan, fmt.Errorf("MAC %s is announced at two VTEPs, %s and %s", mac, v, vtep)
		}
		if m, ok := neigh[ip]; ok && m != mac {
			return plan, fmt.Errorf("address %s is announced with two MACs, %s and %s", ip, m, mac)
		}
		if _, ok := fdb[mac]; !ok && have.FDB[mac] != vtep {
			plan.fdbSet = append(plan.fdbSet, fdbEntry{mac, vtep})
		}
		if _, ok := neigh[ip]; !ok && have.Neigh[ip] != mac {
			plan.neighSet = append(plan.neighSet, p)
		}
		fdb[mac], neigh[ip] = vtep, mac
	}
	for mac, vtep := range have.FDB {
		if _, ok := fdb[mac]; !ok {
			plan.fdbDel = append(plan.fdbDel, fdbEntry{mac, vtep})
		}
	}
	for ip := range have.Neigh {
		if _, ok := neigh[ip]; !ok {
			plan.neighDel = append(plan.neighDel, ip)
		}
	}
	slices.SortFunc(plan.fdbDel, func(a, b fdbEntry) int { return strings.Compare(a.mac, b.mac) })
	slices.SortFunc(plan.neighDel, netip.Addr.Compare)
	return plan, nil
}

func fdbNeigh(index int, mac net.HardwareAddr, vtep netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: vtep.Unmap().AsSlice(), HardwareAddr: mac}
}

func ipNeigh(index int, ip netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	ip = ip.Unmap()
	return &netlink.Neigh{LinkIndex: index, Family: family(ip), State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// deleteNeigh deletes an entry; one already gone is no error.
func (d *Dataplane) deleteNeigh(nb *netlink.Neigh) error {
	if err := d.nl.NeighDel(nb); err != nil && !errors.Is(err, unix.ENOENT) && !isNotFound(err) {
		what := "neighbour entry " + net.IP(nb.IP).String()
		if nb.Family == unix.AF_BRIDGE {
			what = "FDB entry " + nb.HardwareAddr.String()
		}
		return fmt.Errorf("delete %s: %w", what, err)
	}
	return nil
}
