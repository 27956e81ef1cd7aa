package bridge

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
	"github.com/mynet/mynet/netutil/failpoint"
)

// ProbePort reports whether a host process holds proto/port on ip (or on
// any address when ip is invalid), by binding it for a moment. mynet's own
// published ports are DNAT rules, not sockets, so they never show here;
// Docker's docker-proxy and any host service do.
func (d *Dataplane) ProbePort(proto string, ip netip.Addr, port uint16) error {
	host := ""
	if ip.IsValid() {
		host = ip.String()
	}
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	switch proto {
	case "tcp":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		return l.Close()
	case "udp":
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	return nil // sctp: nothing portable to probe with
}

// EphemeralPorts is the host's ip_local_port_range, from which ports are
// chosen for -p bindings without a host port, as Docker does.
func (d *Dataplane) EphemeralPorts() (first, last uint16) {
	first, last = 32768, 60999 // the kernel's default
	v, err := readSysctl("net/ipv4/ip_local_port_range")
	if err != nil {
		return first, last
	}
	f := strings.Fields(v)
	if len(f) != 2 {
		return first, last
	}
	a, err1 := strconv.ParseUint(f[0], 10, 16)
	b, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || a > b || a == 0 {
		d.log.Warn("ignoring unusable ip_local_port_range", "value", v, "err", fmt.Sprint(err1, err2))
		return first, last
	}
	return uint16(a), uint16(b)
}

// EnsurePorts publishes the endpoint's ports. On error, the rules (and
// chains) this call added are removed again, and only those: the reconcile
// calls it to repair ports that are live. RemovePorts undoes it.
func (d *Dataplane) EnsurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping) (retErr error) {
	if n.Internal && len(ports) > 0 {
		return fmt.Errorf("network %s is internal: it cannot publish ports", model.Short(n.ID))
	}
	log := d.log.With("network_id", model.Short(n.ID), "endpoint_id", model.Short(ep.ID))
	var undo netutil.Undo
	defer undo.Rollback(&retErr, log)
	for _, fw := range d.firewalls() {
		if err := fw.ensurePorts(ctx, n, ep, ports, &undo); err != nil {
			return err
		}
	}
	return failpoint.Inject("bridge.ports")
}

// RemovePorts deletes the endpoint's port rules, found by their comment,
// and flushes conntrack entries of its UDP ports: a UDP "connection" to a
// port that is published again elsewhere would otherwise keep going to the
// old container.
func (d *Dataplane) RemovePorts(ctx context.Context, ep model.Endpoint, ports []model.PortMapping) error {
	if err := stopped(ctx, "removing the port rules of endpoint "+model.Short(ep.ID)); err != nil {
		return err
	}
	err := d.forAll(func(fw firewall) error { return fw.removePorts(ep, ports) })
	for _, m := range ports {
		if m.Proto != "udp" {
			continue
		}
		var hostPorts []uint16
		for p := uint32(m.HostPort); p <= uint32(max(m.HostPortEnd, m.HostPort)); p++ {
			hostPorts = append(hostPorts, uint16(p))
		}
		if m.Routed() {
			// No host port: flows were addressed to the container port.
			hostPorts = []uint16{m.Port}
		}
		d.later(func(h *netlink.Handle) { d.flushConntrack(h, []netip.Addr{m.ContainerIP}, hostPorts) })
	}
	return err
}
