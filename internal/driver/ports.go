package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/internal/portalloc"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/state"
)

// PortBinding is one -p binding as the engine sends it (its
// types.PortBinding): Proto is the IP protocol number; HostIP "" and
// HostPort 0 leave the choice to mynet.
type PortBinding struct {
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
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, networkID, endpointID string, bindings []PortBinding) error {
	// When dockerd comes back after a crash it kills the old containers
	// and starts them again at once; the old endpoint's veth goes only
	// when the kernel has dismantled the old container's namespace, which
	// can take seconds, and the engine never deletes that endpoint. So a
	// port held by an endpoint created before the engine's last handshake
	// may be about to be free: look again for a while, without holding up
	// other calls. A conflict with an endpoint of the running engine is
	// reported at once.
	deadline := time.Now().Add(d.cfg.OwnerGoneWait)
	for {
		err := d.programPorts(ctx, networkID, endpointID, bindings)
		if !d.heldByOldEngine(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heldByOldEngine reports whether err is a host port held by an endpoint
// created before the engine's last handshake (Created has whole seconds).
func (d *Driver) heldByOldEngine(err error) bool {
	var held *portHeldError
	return errors.As(err, &held) && held.owner != nil &&
		held.owner.Created.Before(d.activated().Truncate(time.Second))
}

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

func (d *Driver) programPorts(ctx context.Context, networkID, endpointID string, bindings []PortBinding) error {
	// Exclusive: host ports are chosen against every other endpoint's.
	d.opMu.Lock()
	defer d.opMu.Unlock()
	ep, n, err := d.endpointOn(networkID, endpointID, "program ports of")
	if err != nil {
		return err
	}
	if len(bindings) == 0 {
		return nil
	}
	if n.Internal {
		return BadRequestf("network %s is internal: it cannot publish ports", model.Short(n.ID))
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
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, endpointID string) error {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	ep, ok := d.endpoints[endpointID]
	if !ok {
		return nil
	}
	return d.unpublish(ctx, ep)
}

// Leave unpublishes what the endpoint still publishes: out of its sandbox
// it is no container's gateway. Engines up to 28 send Revoke before Leave,
// which leaves nothing to do here. Docker 29 derives Revoke from gateway
// state its remote-driver proxy keeps in memory from Join (moby
// daemon/libnetwork/drivers/remote/driver.go, nwEndpoints), so after a
// daemon restart Leave may come without it. An unknown endpoint succeeds:
// engines since 27.0.1 replay Leave for stale endpoints at startup.
func (d *Driver) Leave(ctx context.Context, networkID, endpointID string) error {
	// Most Leaves find nothing published: they need not wait for the
	// exclusive lock that publishing takes.
	d.mapMu.RLock()
	ep, ok := d.endpoints[endpointID]
	quick := !ok || ep.NetworkID == networkID && len(ep.Ports) == 0
	d.mapMu.RUnlock()
	if quick {
		if !ok {
			d.log.Debug("leave of unknown endpoint", "endpoint_id", model.Short(endpointID))
		}
		return nil
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	ep, ok = d.endpoints[endpointID]
	if !ok {
		return nil
	}
	if ep.NetworkID != networkID {
		return BadRequestf("endpoint %s is on network %s, not on the NetworkID %s of the request; nothing was changed", model.Short(ep.ID), model.Short(ep.NetworkID), model.Short(networkID))
	}
	if err := d.unpublish(ctx, ep); err != nil {
		return fmt.Errorf("leave endpoint %s: %w", model.Short(ep.ID), err)
	}
	return nil
}

// unpublish removes an endpoint's port mappings, record first. The caller
// holds opMu exclusively.
func (d *Driver) unpublish(ctx context.Context, ep *state.Endpoint) error {
	if len(ep.Ports) == 0 {
		return nil
	}
	n := d.networks[ep.NetworkID]
	rec := *ep
	rec.Ports = nil
	if err := d.cfg.Store.PutEndpoint(rec); err != nil {
		return err
	}
	old := ep.Ports
	d.mapMu.Lock()
	*ep = rec
	d.mapMu.Unlock()
	d.touch("endpoint", ep.ID)
	// A removal finishes: see handleRemoval.
	return d.cfg.Dataplane.RemovePorts(context.WithoutCancel(ctx), toBridgeEndpoint(n, ep), toBridgePorts(old))
}

func (d *Driver) endpointOn(networkID, endpointID, op string) (*state.Endpoint, *state.Network, error) {
	ep, ok := d.endpoints[endpointID]
	if !ok || ep.NetworkID != networkID {
		return nil, nil, fmt.Errorf("%s endpoint %s: %w on network %s in mynet's state", op, model.Short(endpointID), ErrNotFound, model.Short(networkID))
	}
	return ep, d.networks[networkID], nil
}

// resolvePorts turns bindings into mappings: a protocol name, container
// addresses of the binding's family (both families for an unspecified host
// address), and host ports chosen where the user left them open, checked
// against mynet's other mappings and against the host's listening sockets.
// Consecutive ports with identical host and container numbers, such as
// -p 8000-8010:8000-8010, become one mapping and so one rule.
func (d *Driver) resolvePorts(n *state.Network, ep *state.Endpoint, bindings []PortBinding) ([]state.Port, error) {
	hostDefault, _ := netip.ParseAddr(n.HostBinding)
	var out []state.Port
	for _, b := range bindings {
		proto, ok := protoNames[b.Proto]
		if !ok {
			return nil, BadRequestf("port %d: protocol %d cannot be published; use tcp, udp or sctp", b.Port, b.Proto)
		}
		hostIP := hostDefault
		if b.HostIP != "" {
			a, err := netip.ParseAddr(b.HostIP)
			if err != nil {
				return nil, BadRequestf("port %d/%s: host IP %q: %v", b.Port, proto, b.HostIP, err)
			}
			hostIP = a.Unmap()
		}
		if hostIP.IsUnspecified() {
			hostIP = netip.Addr{}
		}
		ctrIPs := containerAddrs(ep, hostIP)
		if len(ctrIPs) == 0 {
			return nil, BadRequestf("port %d/%s: the container has no address of host IP %s's family", b.Port, proto, hostIP)
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
func (d *Driver) pickHostPort(proto string, hostIP netip.Addr, b PortBinding, pending []state.Port) (uint16, error) {
	var first, last uint16
	if b.HostPort == 0 {
		first, last = d.cfg.Dataplane.EphemeralPorts()
	}
	req := portalloc.Request{Proto: proto, Port: b.Port, First: b.HostPort, Last: b.HostPortEnd}
	port, err := portalloc.Pick(req, first, last, func(port uint16) error {
		if held, owner := d.portOwner(proto, hostIP, port, pending); held {
			return BadRequest(&portHeldError{port: fmt.Sprintf("%d/%s", port, proto), owner: owner})
		}
		if err := d.cfg.Dataplane.ProbePort(proto, hostIP, port); err != nil {
			return BadRequestf("host port %d/%s is in use on the host: %v", port, proto, err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrBadRequest) {
		err = BadRequest(err) // the range's error names the last refusal
	}
	return port, err
}

// portOwner reports whether proto/port is already published on an
// overlapping host address, and by which endpoint (nil: by another binding
// of the same request).
func (d *Driver) portOwner(proto string, hostIP netip.Addr, port uint16, pending []state.Port) (held bool, owner *state.Endpoint) {
	clash := func(p state.Port) bool { return portalloc.Clashes(portalloc.Mapping(p), proto, hostIP, port) }
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
	if err := d.reconcileEndpoint(context.Background(), e, false, nil); err != nil {
		d.log.Warn("could not drop stale endpoint", "endpoint_id", model.Short(e.ID), "err", err)
		return false
	}
	return true
}

// coalesce merges runs of identity mappings into ranges (see
// portalloc.Coalesce).
func coalesce(in []state.Port) []state.Port {
	if len(in) == 0 {
		return nil
	}
	m := make([]portalloc.Mapping, len(in))
	for i, p := range in {
		m[i] = portalloc.Mapping(p)
	}
	m = portalloc.Coalesce(m)
	out := make([]state.Port, len(m))
	for i, p := range m {
		out[i] = state.Port(p)
	}
	return out
}

func describePorts(ports []state.Port) string {
	m := make([]portalloc.Mapping, len(ports))
	for i, p := range ports {
		m[i] = portalloc.Mapping(p)
	}
	return portalloc.Describe(m)
}
