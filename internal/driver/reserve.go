package driver

import (
	"net/netip"

	"github.com/mynet/mynet/internal/portalloc"
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

// portOwner reports whether proto/port is already published on an
// overlapping host address, and by which endpoint (nil: by another binding
// of the same request). An owner whose container died still holds its
// ports here: ProgramExternalConnectivity drops it, with this call's locks
// released, and tries again.
func portOwner(proto string, hostIP netip.Addr, port uint16, pending []state.Port, taken []published) (held bool, owner *state.Endpoint) {
	clash := func(p state.Port) bool { return portalloc.Clashes(portalloc.Mapping(p), proto, hostIP, port) }
	for _, p := range pending {
		if clash(p) {
			return true, nil
		}
	}
	for i := range taken {
		for _, p := range taken[i].ports {
			if clash(p) {
				return true, &taken[i].owner
			}
		}
	}
	return false, nil
}
