package model

import (
	"net"
	"net/netip"
)

// Network is what the dataplane needs to build one network.
type Network struct {
	ID     string
	Bridge string
	MTU    int // 0: kernel default
	IPv4   []Subnet
	IPv6   []Subnet
	// ICC lets containers of the network reach each other.
	ICC bool
	// Masquerade rewrites egress to the host's address.
	Masquerade bool
	// Internal networks have no egress and no published ports.
	Internal bool
	// Unprotected4 and Unprotected6 are gateway mode nat-unprotected of
	// each family: the containers' addresses may be routed to from outside
	// the host. In the default mode, nat, only published ports are
	// reachable from outside, and only through the host's addresses.
	Unprotected4, Unprotected6 bool
	// Routed4 and Routed6 are gateway mode routed of each family: no NAT
	// (neither masquerade nor DNAT); published container ports, and ICMP,
	// are open at the containers' own addresses to whoever routes to them.
	Routed4, Routed6 bool
	// TrustedInterfaces (trusted_host_interfaces) are host interfaces from
	// which the containers' published ports may be reached at the
	// containers' addresses in gateway mode nat, as from the bridge.
	TrustedInterfaces []string
	// NoBridgeIPv4: the bridge carries no IPv4 address, with
	// inhibit_ipv4 (the operator manages it) or gateway mode isolated.
	// NoBridgeIPv6: IPv6 is off on the bridge (gateway mode isolated), so
	// it has no link-local address either. Containers of the network still
	// reach each other: the bridge forwards frames without an address.
	NoBridgeIPv4, NoBridgeIPv6 bool
}

// Routed reports whether the family's gateway mode is routed.
func (n Network) Routed(v6 bool) bool {
	if v6 {
		return n.Routed6
	}
	return n.Routed4
}

// Unprotected reports whether the family's gateway mode is nat-unprotected.
func (n Network) Unprotected(v6 bool) bool {
	if v6 {
		return n.Unprotected6
	}
	return n.Unprotected4
}

// Subnets returns the network's subnets of one family.
func (n Network) Subnets(v6 bool) []Subnet {
	if v6 {
		return n.IPv6
	}
	return n.IPv4
}

// Subnet is a pool with the gateway address the bridge carries; Gateway is
// invalid when the IPAM driver gave none.
type Subnet struct {
	Pool    netip.Prefix
	Gateway netip.Prefix // gateway address with the pool's length, e.g. 10.0.0.1/24
}

// Endpoint is one veth pair: HostVeth is enslaved to the network's bridge,
// ContainerVeth is what Join hands to the engine to move into the sandbox.
type Endpoint struct {
	NetworkID     string
	ID            string
	Bridge        string
	HostVeth      string
	ContainerVeth string
	MAC           net.HardwareAddr
	MTU           int
	// Addresses are the container's; used to clear stale conntrack and
	// neighbour entries when the address is reused.
	Addresses []netip.Addr
	// Ports are the endpoint's published ports, removed with it.
	Ports []PortMapping
	// AntiSpoofing filters what the container may send: only its own MAC
	// and addresses, no router advertisements, no other ethertypes.
	AntiSpoofing bool
	// TrustedInterfaces are the network's (Network.TrustedInterfaces):
	// its published ports are open to them at the container's address.
	TrustedInterfaces []string
}

// PortMapping publishes container ports on the host: HostPort..HostPortEnd
// to Port..Port+(HostPortEnd-HostPort) of ContainerIP. HostPort 0 is a
// mapping of a family in gateway mode routed: no host port, the container
// port opened at ContainerIP (see Routed).
type PortMapping struct {
	Proto       string     // tcp, udp or sctp
	HostIP      netip.Addr // invalid: every address of the host
	HostPort    uint16
	HostPortEnd uint16 // equal to HostPort for a single port
	ContainerIP netip.Addr
	Port        uint16
}

// Routed reports whether the mapping opens the container port directly,
// with no host port: the family's gateway mode is routed.
func (m PortMapping) Routed() bool { return m.HostPort == 0 }
