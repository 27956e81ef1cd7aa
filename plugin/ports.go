package plugin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// optPortMap is the sandbox label carrying the container's -p bindings.
const optPortMap = "com.docker.network.portmap"

// portBinding is the engine's types.PortBinding as it arrives in JSON.
type portBinding struct {
	Proto       int
	IP          string
	Port        uint16
	HostIP      string
	HostPort    uint16
	HostPortEnd uint16
}

var protoNames = map[int]string{6: "tcp", 17: "udp", 132: "sctp"}

// ProgramExternalConnectivity publishes the container's ports. The engine
// sends it only for the container's gateway endpoint (protocol.md 2.4), and
// again for a new gateway endpoint when the old one leaves; the ports follow.
// The record is written before the rules, so the startup reconcile
// re-creates whatever a crash interrupted.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, req *network.ProgramExternalConnectivityRequest) (*empty, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	bindings, err := parsePortMap(req.Options[optPortMap])
	if err != nil {
		return nil, err
	}
	// When dockerd comes back after a crash it kills the old containers
	// and starts them again at once; the old endpoint's veth goes only
	// when the kernel has dismantled the old container's namespace, which
	// can take seconds, and the engine never deletes that endpoint. So a
	// port held by an endpoint created before the engine's last handshake
	// may be about to be free: look again for a while, without holding up
	// other calls. A conflict with an endpoint of the running engine is
	// reported at once.
	deadline := time.Now().Add(ownerGoneWait)
	for {
		err := d.programPorts(ctx, req, bindings)
		if !d.heldByOldEngine(err) || time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heldByOldEngine reports whether err is a host port held by an endpoint
// created before the engine's last handshake (Created has whole seconds).
func (d *Driver) heldByOldEngine(err error) bool {
	var held *portHeldError
	return errors.As(err, &held) && held.owner != nil &&
		held.owner.Created.Before(d.engineActivated().Truncate(time.Second))
}

// ownerGoneWait bounds how long a port conflict with another endpoint is
// retried; a real conflict is reported that much later.
var ownerGoneWait = 5 * time.Second

// portHeldError is a fixed host port already published: by another
// endpoint (owner), or by another binding of the same request (nil).
type portHeldError struct {
	port  string
	owner *state.Endpoint
}

func (e *portHeldError) Error() string {
	if e.owner == nil {
		return fmt.Sprintf("host port %s is already published by another binding of the same container", e.port)
	}
	return fmt.Sprintf("host port %s is already published by endpoint %s on network %s", e.port, model.Short(e.owner.ID), model.Short(e.owner.NetworkID))
}

func (d *Driver) programPorts(ctx context.Context, req *network.ProgramExternalConnectivityRequest, bindings []portBinding) error {
	// Exclusive: host ports are chosen against every other endpoint's.
	d.opMu.Lock()
	defer d.opMu.Unlock()
	ep, n, err := d.endpointOn(req.NetworkID, req.EndpointID, "program ports of")
	if err != nil {
		return err
	}
	if len(bindings) == 0 {
		return nil
	}
	if n.Internal {
		return badRequestf("network %s is internal: it cannot publish ports", model.Short(n.ID))
	}
	ports := ep.Ports // a repeat (retry, or the gateway moving back) keeps its ports
	if len(ports) == 0 {
		if ports, err = d.resolvePorts(n, ep, bindings); err != nil {
			return fmt.Errorf("publish ports of endpoint %s: %w", model.Short(ep.ID), err)
		}
	}
	rec := *ep
	rec.Ports = ports
	if err := ctxErr(ctx); err != nil {
		return fmt.Errorf("publish ports of endpoint %s: nothing published: %w", model.Short(ep.ID), err)
	}
	if err := d.cfg.Store.PutEndpoint(rec); err != nil {
		return err
	}
	d.touch("endpoint", ep.ID)
	if err := failpoint.Inject("ports.record"); err != nil {
		return err
	}
	err = d.cfg.Dataplane.EnsurePorts(ctx, toBridgeNetwork(n), toBridgeEndpoint(n, &rec), toBridgePorts(ports))
	if err == nil {
		// The record already holds the ports (so that a crash is
		// repaired); the rules existing commits them.
		if err = commitPoint(ctx); err != nil {
			if rerr := d.cfg.Dataplane.RemovePorts(context.WithoutCancel(ctx), toBridgeEndpoint(n, &rec), toBridgePorts(ports)); rerr != nil {
				d.log.Warn("rollback of port rules failed; the reconcile removes them", "endpoint_id", model.Short(ep.ID), "err", rerr)
			}
			err = fmt.Errorf("rolled back: %w", err)
		}
	}
	if err != nil {
		if serr := d.cfg.Store.PutEndpoint(*ep); serr != nil {
			d.log.Warn("could not revert the endpoint record; the startup reconcile retries the ports", "endpoint_id", model.Short(ep.ID), "err", serr)
		}
		return fmt.Errorf("publish ports of endpoint %s: %w", model.Short(ep.ID), err)
	}
	d.mapMu.Lock()
	*ep = rec
	d.mapMu.Unlock()
	d.log.Info("ports published", "network_id", model.Short(n.ID), "endpoint_id", model.Short(ep.ID), "ports", describePorts(ports))
	return nil
}

// RevokeExternalConnectivity unpublishes the ports; the record goes first,
// so a leftover rule is an orphan the reconcile removes.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, req *network.RevokeExternalConnectivityRequest) (*empty, error) {
	if err := validateIDs(req.NetworkID, req.EndpointID); err != nil {
		return nil, err
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	ep, ok := d.endpoints[req.EndpointID]
	if !ok || len(ep.Ports) == 0 {
		return nil, nil
	}
	n := d.networks[ep.NetworkID]
	rec := *ep
	rec.Ports = nil
	if err := d.cfg.Store.PutEndpoint(rec); err != nil {
		return nil, err
	}
	old := ep.Ports
	d.mapMu.Lock()
	*ep = rec
	d.mapMu.Unlock()
	d.touch("endpoint", ep.ID)
	// A removal finishes: see handleRemoval.
	return nil, d.cfg.Dataplane.RemovePorts(context.WithoutCancel(ctx), toBridgeEndpoint(n, ep), toBridgePorts(old))
}

func (d *Driver) endpointOn(networkID, endpointID, op string) (*state.Endpoint, *state.Network, error) {
	ep, ok := d.endpoints[endpointID]
	if !ok || ep.NetworkID != networkID {
		return nil, nil, fmt.Errorf("%s endpoint %s: %w on network %s in mynet's state", op, model.Short(endpointID), ErrNotFound, model.Short(networkID))
	}
	return ep, d.networks[networkID], nil
}

// parsePortMap decodes the engine's port map, which arrives as a generic
// JSON value inside the options map.
func parsePortMap(raw any) ([]portBinding, error) {
	if raw == nil {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, badRequestf("option %s: %v", optPortMap, err)
	}
	var out []portBinding
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, badRequestf("option %s is not a list of port bindings: %v", optPortMap, err)
	}
	for i, pb := range out {
		if err := checkBinding(pb); err != nil {
			return nil, badRequestf("option %s[%d]: %w", optPortMap, i, err)
		}
	}
	return out, nil
}

// checkBinding refuses what no rule can publish, before anything is
// written: the engine's CLI refuses these too, but the socket is open to
// any client of the API.
func checkBinding(b portBinding) error {
	if b.Port == 0 {
		return errors.New("Port is 0; publish a container port from 1 to 65535")
	}
	if b.HostPortEnd != 0 && b.HostPortEnd < b.HostPort {
		return fmt.Errorf("HostPortEnd %d is below HostPort %d; give a host port range low to high", b.HostPortEnd, b.HostPort)
	}
	if b.HostIP == "" {
		return nil
	}
	a, err := netip.ParseAddr(b.HostIP)
	if err != nil {
		return fmt.Errorf("HostIP %q: %v", b.HostIP, err)
	}
	if err := hostAddress(a.Unmap()); err != nil {
		return fmt.Errorf("HostIP %s %w", b.HostIP, err)
	}
	return nil
}

// hostAddress refuses the addresses a port cannot be published on: a
// packet to them is not addressed to one host. The unspecified address is
// fine: it means all of the host's addresses.
func hostAddress(a netip.Addr) error {
	switch {
	case a.IsMulticast():
		return errors.New("is a multicast address; publish on one of the host's unicast addresses, or on none for all")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("is the broadcast address; publish on one of the host's unicast addresses, or on none for all")
	}
	return nil
}

// resolvePorts turns bindings into mappings: a protocol name, container
// addresses of the binding's family (both families for an unspecified host
// address), and host ports chosen where the user left them open, checked
// against mynet's other mappings and against the host's listening sockets.
// Consecutive ports with identical host and container numbers, such as
// -p 8000-8010:8000-8010, become one mapping and so one rule.
func (d *Driver) resolvePorts(n *state.Network, ep *state.Endpoint, bindings []portBinding) ([]state.Port, error) {
	hostDefault, _ := netip.ParseAddr(n.HostBinding)
	var out []state.Port
	for _, b := range bindings {
		proto, ok := protoNames[b.Proto]
		if !ok {
			return nil, badRequestf("port %d: protocol %d cannot be published; use tcp, udp or sctp", b.Port, b.Proto)
		}
		hostIP := hostDefault
		if b.HostIP != "" {
			a, err := netip.ParseAddr(b.HostIP)
			if err != nil {
				return nil, badRequestf("port %d/%s: host IP %q: %v", b.Port, proto, b.HostIP, err)
			}
			hostIP = a.Unmap()
		}
		if hostIP.IsUnspecified() {
			hostIP = netip.Addr{}
		}
		ctrIPs := containerAddrs(ep, hostIP)
		if len(ctrIPs) == 0 {
			return nil, badRequestf("port %d/%s: the container has no address of host IP %s's family", b.Port, proto, hostIP)
		}
		hostPort, err := d.pickHostPort(proto, hostIP, b, out)
		if err != nil {
			return nil, err
		}
		for _, c := range ctrIPs {
			p := state.Port{Proto: proto, HostPort: hostPort, HostPortEnd: hostPort, ContainerIP: c.String(), Port: b.Port}
			if hostIP.IsValid() {
				p.HostIP = hostIP.String()
			}
			out = append(out, p)
		}
	}
	return coalesce(out), nil
}

func containerAddrs(ep *state.Endpoint, hostIP netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range []string{ep.IPv4, ep.IPv6} {
		p, err := netip.ParsePrefix(a)
		if err == nil && (!hostIP.IsValid() || hostIP.Is6() == p.Addr().Is6()) {
			out = append(out, p.Addr())
		}
	}
	return out
}

// pickHostPort returns the binding's host port: the one given, the first
// free one of a given range, or the first free one of the host's ephemeral
// range when none is given.
func (d *Driver) pickHostPort(proto string, hostIP netip.Addr, b portBinding, pending []state.Port) (uint16, error) {
	first, last := b.HostPort, max(b.HostPortEnd, b.HostPort)
	if b.HostPort == 0 {
		first, last = d.cfg.Dataplane.EphemeralPorts()
	}
	var lastErr error
	for p := uint32(first); p <= uint32(last); p++ {
		port := uint16(p)
		if held, owner := d.portOwner(proto, hostIP, port, pending); held {
			lastErr = badRequest(&portHeldError{port: fmt.Sprintf("%d/%s", port, proto), owner: owner})
			continue
		}
		if err := d.cfg.Dataplane.ProbePort(proto, hostIP, port); err != nil {
			lastErr = badRequestf("host port %d/%s is in use on the host: %v", port, proto, err)
			continue
		}
		return port, nil
	}
	if first == last {
		return 0, lastErr
	}
	return 0, badRequestf("no free host port for %d/%s in %d-%d (last problem: %v)", b.Port, proto, first, last, lastErr)
}

// portOwner reports whether proto/port is already published on an
// overlapping host address, and by which endpoint (nil: by another binding
// of the same request).
func (d *Driver) portOwner(proto string, hostIP netip.Addr, port uint16, pending []state.Port) (held bool, owner *state.Endpoint) {
	clash := func(p state.Port) bool {
		other, _ := netip.ParseAddr(p.HostIP)
		return p.Proto == proto && port >= p.HostPort && port <= p.HostPortEnd &&
			(!hostIP.IsValid() || !other.IsValid() || other == hostIP)
	}
	for _, p := range pending {
		if clash(p) {
			return true, nil
		}
	}
	for _, e := range d.endpoints {
		for _, p := range e.Ports {
			if clash(p) && !d.dropIfStale(e) {
				owner := *e // read after opMu is released
				return true, &owner
			}
		}
	}
	return false, nil
}

// dropIfStale removes an endpoint whose veth is gone and reports whether it
// did. After the engine restarts, a --restart=always container comes back
// with a new endpoint before the periodic reconcile has noticed that the
// old one died, and must get its ports back rather than a conflict.
func (d *Driver) dropIfStale(e *state.Endpoint) bool {
	n := d.networks[e.NetworkID]
	if n == nil {
		return false
	}
	if exists, err := d.cfg.Dataplane.EndpointExists(toBridgeEndpoint(n, e)); err != nil || exists {
		return false
	}
	if err := d.reconcileEndpoint(context.Background(), e, false); err != nil {
		d.log.Warn("could not drop stale endpoint", "endpoint_id", model.Short(e.ID), "err", err)
		return false
	}
	return true
}

// coalesce merges runs of consecutive identity mappings (host port equal
// to container port) into ranges. A DNAT to a port range keeps the original
// port when it lies in the range, so one rule maps the run one to one.
func coalesce(in []state.Port) []state.Port {
	slices.SortStableFunc(in, func(a, b state.Port) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostIP, b.HostIP), cmp.Compare(a.ContainerIP, b.ContainerIP), cmp.Compare(a.HostPort, b.HostPort))
	})
	var out []state.Port
	for _, p := range in {
		if len(out) > 0 {
			last := &out[len(out)-1]
			if last.Proto == p.Proto && last.HostIP == p.HostIP && last.ContainerIP == p.ContainerIP &&
				last.HostPort == last.Port && p.HostPort == p.Port && p.HostPort == last.HostPortEnd+1 {
				last.HostPortEnd = p.HostPort
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

func describePorts(ports []state.Port) string {
	var parts []string
	for _, p := range ports {
		host := p.HostIP
		if host == "" {
			host = "*"
		}
		hp, cp := fmt.Sprint(p.HostPort), fmt.Sprint(p.Port)
		if p.HostPortEnd > p.HostPort {
			hp += fmt.Sprint("-", p.HostPortEnd)
			cp += fmt.Sprint("-", p.Port+p.HostPortEnd-p.HostPort)
		}
		parts = append(parts, fmt.Sprintf("%s:%s->%s:%s/%s", host, hp, p.ContainerIP, cp, p.Proto))
	}
	return strings.Join(parts, ", ")
}
