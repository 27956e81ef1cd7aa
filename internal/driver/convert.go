package driver

import (
	"net/netip"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/state"
)

func toBridgeNetwork(n *state.Network) model.Network {
	return model.Network{
		ID: n.ID, Bridge: n.Bridge, MTU: n.MTU, IPv4: toBridgeSubnets(n.IPv4), IPv6: toBridgeSubnets(n.IPv6),
		ICC: n.ICC, Masquerade: n.Masquerade, Internal: n.Internal,
		Unprotected4: n.GatewayMode4 == GatewayNATUnprotected, Unprotected6: n.GatewayMode6 == GatewayNATUnprotected,
		Routed4: n.GatewayMode4 == GatewayRouted, Routed6: n.GatewayMode6 == GatewayRouted,
		TrustedInterfaces: n.TrustedInterfaces,
		NoBridgeIPv4:      n.InhibitIPv4 || n.GatewayMode4 == GatewayIsolated, NoBridgeIPv6: n.GatewayMode6 == GatewayIsolated,
	}
}

func toBridgeSubnets(in []state.Subnet) []model.Subnet {
	out := make([]model.Subnet, 0, len(in))
	for _, s := range in {
		var bs model.Subnet
		bs.Pool, _ = netip.ParsePrefix(s.Pool)
		bs.Gateway, _ = netip.ParsePrefix(s.Gateway)
		out = append(out, bs)
	}
	return out
}

func toBridgeEndpoint(n *state.Network, e *state.Endpoint) model.Endpoint {
	mac, _ := parseMAC(e.MAC)
	ep := model.Endpoint{NetworkID: n.ID, ID: e.ID, Bridge: n.Bridge, HostVeth: e.HostVeth, ContainerVeth: e.ContainerVeth, MAC: mac, MTU: n.MTU, Ports: toBridgePorts(e.Ports), AntiSpoofing: n.AntiSpoofing, TrustedInterfaces: n.TrustedInterfaces}
	for _, a := range []string{e.IPv4, e.IPv6} {
		if p, err := netip.ParsePrefix(a); err == nil {
			ep.Addresses = append(ep.Addresses, p.Addr())
		}
	}
	return ep
}

func toBridgePorts(in []state.Port) []model.PortMapping {
	out := make([]model.PortMapping, 0, len(in))
	for _, p := range in {
		m := model.PortMapping{Proto: p.Proto, HostPort: p.HostPort, HostPortEnd: p.HostPortEnd, Port: p.Port}
		m.HostIP, _ = netip.ParseAddr(p.HostIP)
		m.ContainerIP, _ = netip.ParseAddr(p.ContainerIP)
		out = append(out, m)
	}
	return out
}
