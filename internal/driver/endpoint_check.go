package driver

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/ipam"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/state"
)

// newEndpoint checks the network's capacity and the request's addresses
// and MAC, and builds the record; under mapMu.
func (d *Driver) newEndpoint(n *state.Network, id string, iface Interface) (state.Endpoint, error) {
	if count := d.index.count(n.ID); count >= d.cfg.MaxEndpoints {
		return state.Endpoint{}, fmt.Errorf("network %s has %d endpoints, the most mynet puts on one bridge (the kernel allows 1024 ports); use another network", model.Short(n.ID), count)
	}
	host, ctr := model.VethNames(id)
	ep := state.Endpoint{NetworkID: n.ID, ID: id, HostVeth: host, ContainerVeth: ctr, Created: now()}
	var err error
	if ep.IPv4, err = endpointAddress("Address", iface.Address, n.IPv4); err != nil {
		return ep, err
	}
	if ep.IPv6, err = endpointAddress("AddressIPv6", iface.AddressIPv6, n.IPv6); err != nil {
		return ep, err
	}
	for _, f := range []struct{ field, addr string }{{"Address", ep.IPv4}, {"AddressIPv6", ep.IPv6}} {
		p, err := netip.ParsePrefix(f.addr)
		if err != nil {
			continue // none given
		}
		if owner := d.index.addrOwner(n.ID, p.Addr()); owner != "" {
			return ep, d.held(n, owner, fmt.Sprintf("Interface.%s %s is already the address of endpoint %s on network %s; give each container its own address (--ip/--ip6), or let the IPAM driver choose", f.field, p, model.Short(owner), model.Short(n.ID)))
		}
	}
	if iface.MacAddress != "" {
		mac, err := parseMAC(iface.MacAddress)
		if err != nil {
			return ep, BadRequestf("Interface.MacAddress %w; give a unicast MAC (--mac-address), or none to let mynet choose", err)
		}
		ep.MAC = mac.String()
		if owner := d.index.macOwner(n.ID, ep.MAC); owner != "" {
			return ep, d.held(n, owner, fmt.Sprintf("Interface.MacAddress %s is already the MAC of endpoint %s on network %s; give each container its own (--mac-address), or none to let mynet choose", ep.MAC, model.Short(owner), model.Short(n.ID)))
		}
		return ep, nil
	}
	// In a cluster network every host derives the MAC from the address,
	// the one the claim published when the engine asked without a MAC.
	if p, err := netip.ParsePrefix(ep.IPv4); err == nil && n.Cluster != "" {
		if ep.MAC = ClusterMAC(p.Addr()); d.index.macOwner(n.ID, ep.MAC) == "" {
			ep.MACGenerated = true
			return ep, nil
		}
	}
	// A random MAC collides with one of 1000 others once in 10^11 tries;
	// drawing again is cheaper than explaining it.
	for {
		mac, err := netutil.RandomMAC()
		if err != nil {
			return ep, err
		}
		if ep.MAC = mac.String(); d.index.macOwner(n.ID, ep.MAC) == "" {
			ep.MACGenerated = true
			return ep, nil
		}
	}
}

// held returns the 400 for an address or MAC that owner holds; under mapMu.
func (d *Driver) held(n *state.Network, owner, msg string) error {
	e := &heldError{msg: msg, networkID: n.ID, owner: owner}
	if o := d.endpoints[owner]; o != nil {
		e.created = o.Created
	}
	return BadRequest(e)
}

// endpointAddress checks an address the engine assigned: it must be a
// host address of one of the network's subnets, with the subnet's prefix
// length (the container's route to the subnet is derived from it), and not
// the gateway. An empty address is fine: the engine assigns IPv6 only with
// --ipv6.
func endpointAddress(field, addr string, subnets []state.Subnet) (string, error) {
	if addr == "" {
		return "", nil
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return "", BadRequestf("Interface.%s %q: %v", field, addr, err)
	}
	a := p.Addr()
	for _, s := range subnets {
		pool, err := netip.ParsePrefix(s.Pool)
		if err != nil || !pool.Contains(a) {
			continue
		}
		if p.Bits() != pool.Bits() {
			return "", BadRequestf("Interface.%s %s has another prefix length than the network's subnet %s; use %s", field, p, pool, netip.PrefixFrom(a, pool.Bits()))
		}
		if gw, err := netip.ParsePrefix(s.Gateway); err == nil && gw.Addr() == a {
			return "", BadRequestf("Interface.%s %s is the network's gateway; give the container another address of %s", field, p, pool)
		}
		if what := ipam.ReservedHost(pool, a); what != "" {
			return "", BadRequestf("Interface.%s %s is the %s address of %s; give the container another address of it", field, p, what, pool)
		}
		return p.String(), nil
	}
	return "", BadRequestf("Interface.%s %s is not in any subnet of the network (%s); give an address of one", field, p, describeSubnets(subnets))
}

func describeSubnets(subnets []state.Subnet) string {
	if len(subnets) == 0 {
		return "none of this family"
	}
	out := make([]string, len(subnets))
	for i, s := range subnets {
		out[i] = s.Pool
	}
	return strings.Join(out, ", ")
}

// sameInterface checks that a retried CreateEndpoint asks for what the
// existing endpoint has: the engine retries with the same request, so
// another address or MAC is another endpoint under a reused ID.
func sameInterface(old *state.Endpoint, iface Interface) error {
	for _, f := range []struct{ field, want, have string }{
		{"Address", iface.Address, old.IPv4}, {"AddressIPv6", iface.AddressIPv6, old.IPv6},
	} {
		want := f.want
		if p, err := netip.ParsePrefix(want); err == nil {
			want = p.String()
		}
		if want != f.have {
			return BadRequestf("endpoint %s already exists with Interface.%s %q, not %q; delete it before creating it again with another address", model.Short(old.ID), f.field, f.have, f.want)
		}
	}
	want := ""
	if mac, err := net.ParseMAC(iface.MacAddress); err == nil {
		want = mac.String()
	}
	// A retry may ask for the MAC mynet chose, or again for none.
	if (iface.MacAddress == "" && !old.MACGenerated) || (iface.MacAddress != "" && want != old.MAC) {
		return BadRequestf("endpoint %s already exists with Interface.MacAddress %q, not %q; delete it before creating it again with another MAC", model.Short(old.ID), old.MAC, iface.MacAddress)
	}
	return nil
}

// parseMAC accepts a 6-byte unicast Ethernet address; its errors start
// with the address, for the caller to name the field.
func parseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q is not a 6-byte Ethernet address", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("%s is a multicast address", s)
	}
	if bytes.Equal(mac, make(net.HardwareAddr, 6)) {
		return nil, fmt.Errorf("%s is the all-zero address, which no interface may have", s)
	}
	return mac, nil
}

// gatewayFor returns the gateway of the subnet that holds addr.
func gatewayFor(addr string, subnets []state.Subnet) string {
	a, err := netip.ParsePrefix(addr)
	if err != nil {
		return ""
	}
	for _, s := range subnets {
		pool, err1 := netip.ParsePrefix(s.Pool)
		gw, err2 := netip.ParsePrefix(s.Gateway)
		if err1 == nil && err2 == nil && pool.Contains(a.Addr()) {
			return gw.Addr().String()
		}
	}
	return ""
}
