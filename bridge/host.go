package bridge

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// HostPrefixes lists the host's connected routes and interface addresses of
// one family: subnets a new pool must not overlap.
func (d *Dataplane) HostPrefixes(v6 bool) ([]netip.Prefix, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	var out []netip.Prefix
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return d.nl.RouteListFiltered(family, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		// Only routes without a gateway: a default or VPN route via a
		// gateway would otherwise rule out everything (moby PR 42598).
		if r.Dst == nil || r.Gw != nil {
			continue
		}
		if p, ok := prefixFromIPNet(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p)
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return d.nl.AddrList(nil, family) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
