package driver

import (
	"net/netip"

	"github.com/mynet/mynet/state"
)

// Host ports are chosen under portMu against everyone else's, published or
// reserved by a publish under way; the rules are written without it.

// reservePorts chooses the host ports of bindings and holds them for ep
// until release is called: another publish finds them taken, as it would
// find them once they are in ep's record.
func (d *Driver) reservePorts(n *state.Network, ep *state.Endpoint, bindings []PortBinding) (ports []state.Port, release func(), err error) {
	d.portMu.Lock()
	defer d.portMu.Unlock()
	if ports, err = d.resolvePorts(n, ep, bindings, d.publishedPorts(ep.ID)); err != nil {
		return nil, nil, err
	}
	if d.reserved == nil {
		d.reserved = map[string][]state.Port{}
	}
	d.reserved[ep.ID] = ports
	return ports, func() {
		d.portMu.Lock()
		delete(d.reserved, ep.ID)
		d.portMu.Unlock()
	}, nil
}

// published is one endpoint's host ports as a publish sees them: those of
// its record, or those reserved for it by a publish under way.
type published struct {
	owner state.Endpoint
	ports []state.Port
}

// publishedPorts is every other endpoint's host ports, copied under mapMu
// so that choosing ports, which probes the host's sockets, does not hold
// it. The caller holds portMu.
func (d *Driver) publishedPorts(except string) []published {
	d.mapMu.RLock()
	defer d.mapMu.RUnlock()
	var out []published
	for id, e := range d.endpoints {
		if id == except {
			continue
		}
		if ports := append(e.Ports[:len(e.Ports):len(e.Ports)], d.reserved[id]...); len(ports) > 0 {
			out = append(out, published{owner: *e, ports: ports})
		}
	}
	return out
}

// portIndex finds who publishes a host port in one lookup: a publish of
// 10,000 ports checks each against everyone's, and the request's own,
// which a scan of lists made quadratic.
type portIndex map[protoPort][]heldPort

type protoPort struct {
	proto string
	port  uint16
}

// heldPort is one mapping's hold on a host port: on hostIP (invalid: all
// of the host's addresses), by owner (nil: another binding of the same
// request).
type heldPort struct {
	hostIP netip.Addr
	owner  *state.Endpoint
}

// newPortIndex indexes the host ports of taken.
func newPortIndex(taken []published) portIndex {
	x := portIndex{}
	for i := range taken {
		for _, p := range taken[i].ports {
			x.add(p, &taken[i].owner)
		}
	}
	return x
}

// add records p's host ports; a routed family's mapping (host port 0)
// holds none.
func (x portIndex) add(p state.Port, owner *state.Endpoint) {
	if p.HostPort == 0 {
		return
	}
	ip, _ := netip.ParseAddr(p.HostIP)
	for port := uint32(p.HostPort); port <= uint32(max(p.HostPortEnd, p.HostPort)); port++ {
		k := protoPort{p.Proto, uint16(port)}
		x[k] = append(x[k], heldPort{hostIP: ip, owner: owner})
	}
}

// owner reports whether proto/port is already published on an address
// that overlaps hostIP, and by which endpoint (nil: by another binding of
// the same request, which is reported first). An owner whose container
// died still holds its ports here: ProgramExternalConnectivity drops it,
// with this call's locks released, and tries again.
func (x portIndex) owner(proto string, hostIP netip.Addr, port uint16) (held bool, owner *state.Endpoint) {
	for _, h := range x[protoPort{proto, port}] {
		if hostIP.IsValid() && h.hostIP.IsValid() && h.hostIP != hostIP {
			continue
		}
		if h.owner == nil {
			return true, nil
		}
		if !held {
			held, owner = true, h.owner
		}
	}
	return held, owner
}
