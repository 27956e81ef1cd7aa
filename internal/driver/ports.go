package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
	// reported at once, unless its container is gone already: then the
	// endpoint is dropped (with no lock of this call held) and the ports
	// are taken over.
	deadline := time.Now().Add(d.cfg.OwnerGoneWait)
	for drops := 0; ; {
		err := d.programPorts(ctx, networkID, endpointID, bindings)
		var held *portHeldError
		if !errors.As(err, &held) || held.owner == nil {
			return err
		}
		if drops < maxStaleDrops && d.ownerDied(held.owner) {
			gone, derr := d.dropDead(ctx, held.owner.NetworkID, held.owner.ID)
			if derr != nil {
				d.log.Warn("could not drop stale endpoint", "endpoint_id", model.Short(held.owner.ID), "err", derr)
			}
			if gone {
				drops++
				continue
			}
		}
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

// ownerDied reports whether an endpoint's veth is gone. It is asked
// before dropDead, which waits for the endpoint's lock: a live owner may
// hold it for a while, publishing the very port in question.
func (d *Driver) ownerDied(e *state.Endpoint) bool {
	d.mapMu.RLock()
	n := d.networks[e.NetworkID]
	d.mapMu.RUnlock()
	if n == nil {
		return false
	}
	exists, err := d.cfg.Dataplane.EndpointExists(toBridgeEndpoint(n, e))
	return err == nil && !exists
}

// maxStaleDrops bounds the stale owners one publish drops before it
// reports the conflict: each drop removes an endpoint, so the loop ends
// anyway, but a bound keeps a surprise from turning into a long walk.
const maxStaleDrops = 16

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

// programPorts publishes under the shared opMu and the endpoint's lock, so
// publishing a thousand ports holds up no other container's calls: host
// ports are chosen and reserved under portMu (reservePorts), which is
// released before the record and the rules are written.
func (d *Driver) programPorts(ctx context.Context, networkID, endpointID string, bindings []PortBinding) error {
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(endpointID)()
	d.mapMu.RLock()
	ep, n, err := d.endpointOn(networkID, endpointID, "program ports of")
	var cur state.Endpoint
	if err == nil {
		cur = *ep
	}
	d.mapMu.RUnlock()
	if err != nil {
		return err
	}
	if len(bindings) == 0 {
		return nil
	}
	if n.Internal {
		return BadRequestf("network %s is internal: it cannot publish ports", model.Short(n.ID))
	}
	ports := cur.Ports // a repeat (retry, or the gateway moving back) keeps its ports
	if len(ports) == 0 {
		var release func()
		if ports, release, err = d.reservePorts(n, &cur, bindings); err != nil {
			return fmt.Errorf("publish ports of endpoint %s: %w", model.Short(cur.ID), err)
		}
		// Released once the endpoint's record in the map holds the
		// ports, or on failure.
		defer release()
	}
	rec := cur
	rec.Ports = ports
	if err := ctxErr(ctx); err != nil {
		return fmt.Errorf("publish ports of endpoint %s: nothing published: %w", model.Short(cur.ID), err)
	}
	if err := d.cfg.Store.PutEndpoint(rec); err != nil {
		return err
	}
	d.touch("endpoint", cur.ID)
	if err := failpoint.Inject("ports.record"); err != nil {
		return err
	}
	err = d.cfg.Dataplane.EnsurePorts(ctx, toBridgeNetwork(n), toBridgeEndpoint(n, &rec), toBridgePorts(ports))
	if err == nil {
		// The record already holds the ports (so that a crash is
		// repaired); the rules existing commits them.
		if err = commitPoint(ctx); err != nil {
			if rerr := d.cfg.Dataplane.RemovePorts(context.WithoutCancel(ctx), toBridgeEndpoint(n, &rec), toBridgePorts(ports)); rerr != nil {
				d.log.Warn("rollback of port rules failed; the reconcile removes them", "endpoint_id", model.Short(cur.ID), "err", rerr)
			}
			err = fmt.Errorf("rolled back: %w", err)
		}
	}
	if err != nil {
		if serr := d.cfg.Store.PutEndpoint(cur); serr != nil {
			d.log.Warn("could not revert the endpoint record; the startup reconcile retries the ports", "endpoint_id", model.Short(cur.ID), "err", serr)
		}
		return fmt.Errorf("publish ports of endpoint %s: %w", model.Short(cur.ID), err)
	}
	d.mapMu.Lock()
	*ep = rec
	d.mapMu.Unlock()
	d.log.Info("ports published", "network_id", model.Short(n.ID), "endpoint_id", model.Short(cur.ID), "ports", describePorts(ports))
	return nil
}

// RevokeExternalConnectivity unpublishes the ports; the record goes first,
// so a leftover rule is an orphan the reconcile removes.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, endpointID string) error {
	// Most containers publish nothing: their Revoke need not queue for
	// opMu, where it would wait behind a reconcile pass that waits in turn
	// for another container's port rules.
	d.mapMu.RLock()
	ep, ok := d.endpoints[endpointID]
	quick := !ok || len(ep.Ports) == 0
	d.mapMu.RUnlock()
	if quick {
		return nil
	}
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(endpointID)()
	d.mapMu.RLock()
	ep, ok = d.endpoints[endpointID]
	d.mapMu.RUnlock()
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
	// endpoint's lock.
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
	d.opMu.RLock()
	defer d.opMu.RUnlock()
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	defer d.epLocks.lock(endpointID)()
	d.mapMu.RLock()
	ep, ok = d.endpoints[endpointID]
	d.mapMu.RUnlock()
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
// holds opMu (shared will do) and the endpoint's lock.
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
func (d *Driver) resolvePorts(n *state.Network, ep *state.Endpoint, bindings []PortBinding, taken []published) ([]state.Port, error) {
	hostDefault, _ := netip.ParseAddr(n.HostBinding)
	held := newPortIndex(taken)
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
		natIPs, routed := splitRouted(n, ctrIPs)
		out = appendRouted(out, proto, b.Port, routed)
		if len(natIPs) == 0 {
			continue
		}
		hostPort, err := d.pickHostPort(proto, hostIP, b, held)
		if err != nil {
			return nil, err
		}
		for _, c := range natIPs {
			p := state.Port{Proto: proto, HostPort: hostPort, HostPortEnd: hostPort, ContainerIP: c.String(), Port: b.Port}
			if hostIP.IsValid() {
				p.HostIP = hostIP.String()
			}
			out = append(out, p)
			held.add(p, nil)
		}
	}
	return coalesce(out), nil
}

// splitRouted separates the container addresses whose family is in
// gateway mode routed from those that get a host port.
func splitRouted(n *state.Network, ctrIPs []netip.Addr) (nat, routed []netip.Addr) {
	for _, c := range ctrIPs {
		mode := n.GatewayMode4
		if c.Is6() {
			mode = n.GatewayMode6
		}
		if mode == GatewayRouted {
			routed = append(routed, c)
		} else {
			nat = append(nat, c)
		}
	}
	return nat, routed
}

// appendRouted adds the mappings of a binding's routed families: as in
// Docker's bridge (moby libnetwork/drivers/bridge/port_mapping_linux.go,
// configurePortBindingIPv4/6 and attemptBindHostPorts with disableNAT),
// the host port and host address are ignored, no host port is reserved,
// and the container port is opened at the container's address (HostPort
// 0). Two bindings of the same container port (-p 8080:80 -p 8081:80)
// open it once.
func appendRouted(out []state.Port, proto string, port uint16, routed []netip.Addr) []state.Port {
	for _, c := range routed {
		p := state.Port{Proto: proto, ContainerIP: c.String(), Port: port}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
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
func (d *Driver) pickHostPort(proto string, hostIP netip.Addr, b PortBinding, held portIndex) (uint16, error) {
	var first, last uint16
	if b.HostPort == 0 {
		first, last = d.cfg.Dataplane.EphemeralPorts()
	}
	req := portalloc.Request{Proto: proto, Port: b.Port, First: b.HostPort, Last: b.HostPortEnd}
	port, err := portalloc.Pick(req, first, last, func(port uint16) error {
		if taken, owner := held.owner(proto, hostIP, port); taken {
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
