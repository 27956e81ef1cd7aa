package doctor

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/peers"
)

// checkCluster checks, for a daemon in cluster mode, the store's
// reachability and each cluster network's VXLAN device and entries
// against the peers the daemon's agent keeps from the store's adverts. A
// daemon not in cluster mode (its state dump says so) is not asked.
func (d *doctor) checkCluster(ctx context.Context, nl *netlink.Handle) {
	r, err := d.clusterFetch(ctx, d.t.Socket)
	switch {
	case err != nil && strings.Contains(err.Error(), "not in cluster mode"):
		return
	case err != nil:
		d.add("cluster", statusSkipped, "no cluster status from the daemon: "+err.Error(), "")
		return
	case r.Degraded:
		d.add("cluster store", statusWarning, fmt.Sprintf("host %s is cut off from the cluster store (degraded): entries are kept as last known, no claim is freed or re-asserted until it is back", r.HostID),
			"check the network path to etcd and the daemon's log (cluster liveness lease lost)")
	default:
		for _, n := range r.Networks {
			if n.StoreError != "" {
				d.add("cluster store", statusProblem, "network "+n.Name+": "+n.StoreError, "check that etcd is running and reachable from this host (serve --cluster-store)")
				break
			}
		}
	}
	for _, c := range r.Conflicts {
		d.add("cluster claims", statusProblem, fmt.Sprintf("address %s of network %s was lost while this host was cut off: %s", c.IP, c.Network, c.Err),
			"remove the container holding it on this host and run it again")
	}
	for _, n := range r.Networks {
		d.checkVXLAN(nl, n)
	}
}

// checkVXLAN checks one network's device (up, enslaved to a bridge) and
// its permanent entries against the wanted peers.
func (d *doctor) checkVXLAN(nl *netlink.Handle, n peers.NetworkReport) {
	check := "cluster " + n.Name
	l, err := nl.LinkByName(n.Device)
	if err != nil {
		d.add(check, statusProblem, fmt.Sprintf("VXLAN device %s of network %s is missing: %v", n.Device, n.Name, err), d.reconcileFix("creates it again"))
		return
	}
	var bad []string
	if l.Attrs().Flags&net.FlagUp == 0 {
		bad = append(bad, "down")
	}
	if l.Attrs().MasterIndex == 0 {
		bad = append(bad, "not enslaved to the network's bridge")
	}
	if len(bad) > 0 {
		d.add(check, statusProblem, fmt.Sprintf("VXLAN device %s is %s", n.Device, strings.Join(bad, " and ")), d.reconcileFix("sets it up again"))
	}
	fdb, neigh, err := readEntries(nl, l.Attrs().Index)
	if err != nil {
		d.add(check, statusSkipped, "read the entries of "+n.Device+": "+err.Error(), "")
		return
	}
	missing, extra := compareEntries(n.Peers, fdb, neigh)
	if len(missing)+len(extra) == 0 {
		if len(bad) == 0 {
			d.add(check, statusOK, fmt.Sprintf("VXLAN %s up with the %d remote peer%s' entries", n.Device, len(n.Peers), plural(len(n.Peers))), "")
		}
		return
	}
	var msg []string
	if len(missing) > 0 {
		msg = append(msg, "missing or different: "+strings.Join(missing, ", "))
	}
	if len(extra) > 0 {
		msg = append(msg, "not advertised in the cluster store: "+strings.Join(extra, ", "))
	}
	d.add(check, statusProblem, fmt.Sprintf("VXLAN %s entries differ from the store's adverts: %s", n.Device, strings.Join(msg, "; ")),
		"wait for the daemon's peer resync (every 5 s) and run doctor again; if they persist, its log says why")
}

// readEntries reads a device's permanent FDB entries (MAC -> VTEP) and
// neighbour entries (IP -> MAC), as the daemon writes them.
func readEntries(nl *netlink.Handle, index int) (map[string]netip.Addr, map[netip.Addr]string, error) {
	fdb, neigh := map[string]netip.Addr{}, map[netip.Addr]string{}
	fl, err := nl.NeighList(index, unix.AF_BRIDGE)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range fl {
		vtep, ok := netip.AddrFromSlice(f.IP)
		if f.Flags&netlink.NTF_SELF != 0 && f.State&netlink.NUD_PERMANENT != 0 && ok && len(f.HardwareAddr) == 6 {
			fdb[f.HardwareAddr.String()] = vtep.Unmap()
		}
	}
	nlist, err := nl.NeighList(index, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, err
	}
	for _, nb := range nlist {
		ip, ok := netip.AddrFromSlice(nb.IP)
		if nb.Family != unix.AF_BRIDGE && nb.State&netlink.NUD_PERMANENT != 0 && ok && len(nb.HardwareAddr) == 6 {
			neigh[ip.Unmap()] = nb.HardwareAddr.String()
		}
	}
	return fdb, neigh, nil
}

// compareEntries names the wanted peers whose entries are missing or
// differ, and the entries no peer wants.
func compareEntries(want []peers.Peer, fdb map[string]netip.Addr, neigh map[netip.Addr]string) (missing, extra []string) {
	wantIP, wantMAC := map[netip.Addr]bool{}, map[string]bool{}
	for _, p := range want {
		mac := strings.ToLower(p.MAC)
		wantIP[p.IP.Unmap()], wantMAC[mac] = true, true
		if neigh[p.IP.Unmap()] != mac || fdb[mac] != p.VTEP.Unmap() {
			missing = append(missing, fmt.Sprintf("%s %s via %s", p.IP, mac, p.VTEP))
		}
	}
	for ip, mac := range neigh {
		if !wantIP[ip] {
			extra = append(extra, fmt.Sprintf("neighbour %s %s", ip, mac))
		}
	}
	for mac, vtep := range fdb {
		if !wantMAC[mac] {
			extra = append(extra, fmt.Sprintf("FDB %s via %s", mac, vtep))
		}
	}
	slices.Sort(extra)
	return missing, extra
}
