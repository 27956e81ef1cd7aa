// Package portalloc chooses host ports for published container ports and
// keeps the mappings compact. It is pure: what is taken is asked of the
// caller, which knows the other endpoints and the host's sockets.
package portalloc

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Mapping is one published port mapping: host ports HostPort to
// HostPortEnd of HostIP ("" for all of the host's addresses) forwarded to
// Port and up of ContainerIP.
type Mapping struct {
	Proto       string // tcp, udp, sctp
	HostIP      string
	HostPort    uint16
	HostPortEnd uint16
	ContainerIP string
	Port        uint16
}

// Clashes reports whether m already publishes proto/port on an address
// that overlaps hostIP (invalid: all of the host's addresses).
func Clashes(m Mapping, proto string, hostIP netip.Addr, port uint16) bool {
	other, _ := netip.ParseAddr(m.HostIP)
	return m.Proto == proto && port >= m.HostPort && port <= m.HostPortEnd &&
		(!hostIP.IsValid() || !other.IsValid() || other == hostIP)
}

// Request is the host port wanted for container port Port/Proto: First
// to Last, or any of the ephemeral range when First is 0.
type Request struct {
	Proto       string
	Port        uint16
	First, Last uint16
}

// Pick returns the first port of the request's range that check accepts
// (check returns why a port is not free). A single port's refusal is
// returned as check gave it; for a range, the error names the range and
// the last refusal.
func Pick(r Request, ephemeralFirst, ephemeralLast uint16, check func(port uint16) error) (uint16, error) {
	first, last := r.First, max(r.Last, r.First)
	if r.First == 0 {
		first, last = ephemeralFirst, ephemeralLast
	}
	var lastErr error
	for p := uint32(first); p <= uint32(last); p++ {
		if lastErr = check(uint16(p)); lastErr == nil {
			return uint16(p), nil
		}
	}
	if first == last {
		return 0, lastErr
	}
	return 0, fmt.Errorf("no free host port for %d/%s in %d-%d (last problem: %v)", r.Port, r.Proto, first, last, lastErr)
}

// Coalesce merges runs of consecutive identity mappings (host port equal
// to container port) into ranges. A DNAT to a port range keeps the
// original port when it lies in the range, so one rule maps the run one
// to one. It sorts in; the result is in a stable order.
func Coalesce(in []Mapping) []Mapping {
	slices.SortStableFunc(in, func(a, b Mapping) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostIP, b.HostIP), cmp.Compare(a.ContainerIP, b.ContainerIP), cmp.Compare(a.HostPort, b.HostPort))
	})
	var out []Mapping
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

// Describe formats mappings as docker ps shows them, for logs.
func Describe(ports []Mapping) string {
	var parts []string
	for _, p := range ports {
		host := p.HostIP
		if host == "" {
			host = "*"
		}
		if p.HostPort == 0 {
			// Gateway mode routed: the container port itself is open.
			parts = append(parts, fmt.Sprintf("%s:%d/%s (routed)", p.ContainerIP, p.Port, p.Proto))
			continue
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
