package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/mynet/mynet/internal/model"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// forgetAddresses clears state the kernel keeps about an endpoint's
// addresses once the endpoint is gone: conntrack entries from or to them
// (so that the next owner of an address does not inherit flows, moby#8795)
// and the host's neighbour entries on the bridge (so that the host does not
// keep sending to the old MAC). Best effort: failures are logged, never
// returned.
//
// A conntrack flush walks the whole table (every bucket, of every network
// namespace: 10-20 ms of kernel time on this kind of host), so the janitor
// does it after the answer, for every address queued meanwhile at once.
// Until it has, the addresses are pending: an endpoint created on one of
// them waits for the flush (EnsureEndpoint), since a flush after the new
// container has started would cut its own connections.
func (d *Dataplane) forgetAddresses(ep model.Endpoint) {
	if len(ep.Addresses) == 0 {
		return
	}
	d.forgetMu.Lock()
	if d.forgetting == nil {
		d.forgetting = map[netip.Addr]int{}
	}
	for _, a := range ep.Addresses {
		d.forgetting[a]++
		d.forgetQueue.add(forgetItem{bridge: ep.Bridge, addr: a})
	}
	d.forgetMu.Unlock()
	d.later(d.forgetQueued)
}

// forgetPending reports whether a flush of one of addrs is queued or
// under way.
func (d *Dataplane) forgetPending(addrs []netip.Addr) bool {
	d.forgetMu.Lock()
	defer d.forgetMu.Unlock()
	for _, a := range addrs {
		if d.forgetting[a] > 0 {
			return true
		}
	}
	return false
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
	d.forgetMu.Lock()
	for _, it := range items {
		if d.forgetting[it.addr]--; d.forgetting[it.addr] <= 0 {
			delete(d.forgetting, it.addr)
		}
	}
	d.forgetMu.Unlock()
}

// ForgetStale deletes the conntrack entries from or to an address in one
// of subnets that is not in keep: flows that containers gone while mynet
// was not running left, since their flush at DeleteEndpoint (or the
// janitor's, after it) never ran. The startup calls it, before the socket
// serves and so before any new container has flows, with every local
// network's subnets and every live endpoint's and gateway's address in
// keep; from then on addresses are flushed as their owners go. One pass
// over the table per family.
func (d *Dataplane) ForgetStale(subnets []netip.Prefix, keep []netip.Addr) error {
	f := staleFilter{subnets: subnets, keep: map[netip.Addr]bool{}}
	for _, a := range keep {
		f.keep[a.Unmap()] = true
	}
	var errs []error
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		if !slices.ContainsFunc(subnets, func(p netip.Prefix) bool { return p.Addr().Is6() == (family == unix.AF_INET6) }) {
			continue
		}
		n, err := d.nl.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("flush stale conntrack entries of %v: %w", subnets, err))
		} else if n > 0 {
			d.log.Info("stale conntrack entries flushed", "subnets", subnets, "count", n)
		}
	}
	return errors.Join(errs...)
}

// staleFilter matches a flow whose original or reply source is in one of
// subnets and not in keep.
type staleFilter struct {
	subnets []netip.Prefix
	keep    map[netip.Addr]bool
}

func (f staleFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return f.stale(flow.Forward.SrcIP) || f.stale(flow.Reverse.SrcIP)
}

func (f staleFilter) stale(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	a = a.Unmap()
	if f.keep[a] {
		return false
	}
	return slices.ContainsFunc(f.subnets, func(p netip.Prefix) bool { return p.Contains(a) })
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
