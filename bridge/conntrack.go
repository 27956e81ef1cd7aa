package bridge

import (
	"errors"
	"net/netip"

	"github.com/mynet/mynet/internal/model"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// forgetAddresses clears state the kernel keeps about an endpoint's
// addresses: conntrack entries from or to them (so a reused address does
// not inherit flows) and the host's neighbour entries on the bridge (so the
// host does not keep sending to the previous owner's MAC). Best effort:
// failures are logged, never returned.
//
// A conntrack flush walks the whole table, so the janitor does it for every
// address queued meanwhile at once: one dump per family with a filter per
// address, instead of one dump per container when containers come and go
// in bulk.
func (d *Dataplane) forgetAddresses(ep model.Endpoint) {
	if len(ep.Addresses) == 0 {
		return
	}
	for _, a := range ep.Addresses {
		d.forgetQueue.add(forgetItem{bridge: ep.Bridge, addr: a})
	}
	d.later(d.forgetQueued)
}

type forgetItem struct {
	bridge string
	addr   netip.Addr
}

// forgetQueued flushes what forgetAddresses queued.
func (d *Dataplane) forgetQueued(h *netlink.Handle) {
	items := d.forgetQueue.take()
	if len(items) == 0 {
		return
	}
	var v4, v6 []netip.Addr
	for _, it := range items {
		if it.addr.Is4() {
			v4 = append(v4, it.addr)
		} else {
			v6 = append(v6, it.addr)
		}
	}
	d.flushConntrack(h, v4, nil)
	d.flushConntrack(h, v6, nil)
	for _, it := range items {
		d.forgetNeighbour(h, it.bridge, it.addr)
	}
}

// flushConntrack deletes entries whose original source or reply source is
// one of addrs, all of one family (the reply source is the container for
// connections DNATed to it). With hostPorts it deletes only UDP entries
// DNATed to the addresses from one of those published ports.
// Equivalent to: conntrack -D -s ADDR; conntrack -D -r ADDR [-p udp --dport PORT],
// for each address and port, in one pass over the table.
func (d *Dataplane) flushConntrack(h *netlink.Handle, addrs []netip.Addr, hostPorts []uint16) {
	if len(addrs) == 0 {
		return
	}
	family := netlink.InetFamily(unix.AF_INET)
	if addrs[0].Is6() {
		family = unix.AF_INET6
	}
	kinds := []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackReplySrcIP}
	ports := hostPorts
	if len(ports) > 0 {
		kinds = kinds[1:]
	} else {
		ports = []uint16{0} // any
	}
	var filters []netlink.CustomConntrackFilter
	for _, addr := range addrs {
		for _, kind := range kinds {
			for _, port := range ports {
				f := &netlink.ConntrackFilter{}
				err := f.AddIP(kind, addr.AsSlice())
				if err == nil && port != 0 {
					err = errors.Join(f.AddProtocol(unix.IPPROTO_UDP), f.AddPort(netlink.ConntrackOrigDstPort, port))
				}
				if err != nil {
					d.log.Debug("conntrack filter", "address", addr, "err", err)
					continue
				}
				filters = append(filters, f)
			}
		}
	}
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
	if err != nil {
		d.log.Debug("conntrack flush failed", "addresses", addrs, "err", err)
		return
	}
	if n > 0 {
		d.log.Debug("conntrack entries flushed", "addresses", addrs, "host_ports", hostPorts, "count", n)
	}
}

// forgetNeighbour deletes the host's neighbour entry for addr on the bridge.
// Equivalent to: ip neigh del ADDR dev BRIDGE.
func (d *Dataplane) forgetNeighbour(h *netlink.Handle, bridge string, addr netip.Addr) {
	br, err := h.LinkByName(bridge)
	if err != nil {
		return
	}
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	err = h.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: family, IP: addr.AsSlice()})
	if err != nil && !isNotFound(err) && !errors.Is(err, unix.ENOENT) {
		d.log.Debug("neighbour flush failed", "address", addr, "err", err)
	}
}
