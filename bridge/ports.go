package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
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
