package driver

import (
	"net/netip"

	"github.com/mynet/mynet/state"
)

// endpointIndex holds, per network, what must be unique among the
// network's endpoints, so that CreateEndpoint checks a new one in constant
// time instead of scanning every endpoint of the host; under mapMu. An
// endpoint being created is in it from its check on: two concurrent
// creates cannot take the same address, and MaxEndpoints counts both.
type endpointIndex map[string]*netEndpoints // by network ID

type netEndpoints struct {
	ids   map[string]bool
	addrs map[netip.Addr]string // address -> endpoint ID
	macs  map[string]string     // MAC (net.HardwareAddr form) -> endpoint ID
}

func endpointAddrs(e *state.Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, s := range []string{e.IPv4, e.IPv6} {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

func (x endpointIndex) add(e *state.Endpoint) {
	n := x[e.NetworkID]
	if n == nil {
		n = &netEndpoints{ids: map[string]bool{}, addrs: map[netip.Addr]string{}, macs: map[string]string{}}
		x[e.NetworkID] = n
	}
	n.ids[e.ID] = true
	for _, a := range endpointAddrs(e) {
		n.addrs[a] = e.ID
	}
	if e.MAC != "" {
		n.macs[e.MAC] = e.ID
	}
}

// remove forgets e. An address or MAC is forgotten only if e holds it: a
// state written before duplicates were refused may hold one twice.
func (x endpointIndex) remove(e *state.Endpoint) {
	n := x[e.NetworkID]
	if n == nil {
		return
	}
	delete(n.ids, e.ID)
	for _, a := range endpointAddrs(e) {
		if n.addrs[a] == e.ID {
			delete(n.addrs, a)
		}
	}
	if n.macs[e.MAC] == e.ID {
		delete(n.macs, e.MAC)
	}
	if len(n.ids) == 0 {
		delete(x, e.NetworkID)
	}
}

// count is the number of endpoints of a network, including those being
// created.
func (x endpointIndex) count(networkID string) int {
	if n := x[networkID]; n != nil {
		return len(n.ids)
	}
	return 0
}

// addrOwner and macOwner return the ID of the endpoint of the network that
// holds an address or a MAC, or "".
func (x endpointIndex) addrOwner(networkID string, a netip.Addr) string {
	if n := x[networkID]; n != nil {
		return n.addrs[a]
	}
	return ""
}

func (x endpointIndex) macOwner(networkID, mac string) string {
	if n := x[networkID]; n != nil {
		return n.macs[mac]
	}
	return ""
}
