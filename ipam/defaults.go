package ipam

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// PoolSpec is one --default-address-pool entry: subnets of Size bits carved
// out of Base, handed out when a network is created without --subnet.
type PoolSpec struct {
	Base netip.Prefix
	Size int
}

// DefaultPoolSpecs are used when no --default-address-pool is given. The
// IPv4 pool avoids Docker's own defaults (172.17.0.0/16-172.31.0.0/16 and
// 192.168.0.0/16) so mynet and the built-in bridge never compete, and gives
// 256 networks of 254 addresses each. The IPv6 pool is a unique local /48
// ("myne" in its global ID) split into /64s, for --ipv6 without a subnet.
var DefaultPoolSpecs = []PoolSpec{
	{Base: netip.MustParsePrefix("10.213.0.0/16"), Size: 24},
	{Base: netip.MustParsePrefix("fd6d:796e:6500::/48"), Size: 64},
}

// ParsePoolSpec parses dockerd's --default-address-pool syntax,
// "base=10.213.0.0/16,size=24".
func ParsePoolSpec(s string) (PoolSpec, error) {
	var spec PoolSpec
	var haveBase, haveSize bool
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return spec, fmt.Errorf("default address pool %q: %q is not key=value; want base=CIDR,size=N", s, kv)
		}
		switch k {
		case "base":
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return spec, fmt.Errorf("default address pool %q: base: %w", s, err)
			}
			if p != p.Masked() {
				return spec, fmt.Errorf("default address pool %q: base %s has host bits set; use %s", s, p, p.Masked())
			}
			spec.Base, haveBase = p, true
		case "size":
			n, err := strconv.Atoi(v)
			if err != nil {
				return spec, fmt.Errorf("default address pool %q: size %q is not a number", s, v)
			}
			spec.Size, haveSize = n, true
		default:
			return spec, fmt.Errorf("default address pool %q: unknown key %q; want base=CIDR,size=N", s, k)
		}
	}
	if !haveBase || !haveSize {
		return spec, fmt.Errorf("default address pool %q: both base and size are required", s)
	}
	if spec.Size < spec.Base.Bits() || spec.Size > spec.Base.Addr().BitLen() {
		return spec, fmt.Errorf("default address pool %q: size %d must be between %d and %d", s, spec.Size, spec.Base.Bits(), spec.Base.Addr().BitLen())
	}
	return spec, nil
}

func (s PoolSpec) String() string { return fmt.Sprintf("base=%s,size=%d", s.Base, s.Size) }

// NextFree returns the first subnet of the specs, in order, that overlaps
// none of busy: the pools mynet already holds and the host's own routes and
// addresses. It never returns a pool that is held, which is what breaks the
// engine's overlap loop (it asks again while it holds the rejected pools).
func NextFree(specs []PoolSpec, v6 bool, busy []netip.Prefix) (netip.Prefix, error) {
	for _, s := range specs {
		if s.Base.Addr().Is6() != v6 {
			continue
		}
		step := s.Base.Addr().BitLen() - s.Size
		cand := netip.PrefixFrom(s.Base.Addr(), s.Size)
		for s.Base.Contains(cand.Addr()) {
			if !overlapsAny(cand, busy) {
				return cand, nil
			}
			next, ok := advance(cand.Addr(), step)
			if !ok {
				break
			}
			cand = netip.PrefixFrom(next, s.Size)
		}
	}
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	return netip.Prefix{}, fmt.Errorf("%w: every %s default pool (%s) is in use or overlaps a host route; pass --subnet or add --default-address-pool", ErrExhausted, family, specsString(specs, v6))
}

func overlapsAny(p netip.Prefix, busy []netip.Prefix) bool {
	for _, b := range busy {
		if p.Overlaps(b) {
			return true
		}
	}
	return false
}

// advance adds 2^step to a, reporting false on overflow of the address space.
func advance(a netip.Addr, step int) (netip.Addr, bool) {
	b := a.AsSlice()
	byteIdx, bit := len(b)-1-step/8, uint(step%8)
	carry := uint(1) << bit
	for i := byteIdx; i >= 0 && carry != 0; i-- {
		sum := uint(b[i]) + carry
		b[i] = byte(sum)
		carry = sum >> 8
	}
	if carry != 0 {
		return netip.Addr{}, false
	}
	next, _ := netip.AddrFromSlice(b)
	return next, true
}

func specsString(specs []PoolSpec, v6 bool) string {
	var parts []string
	for _, s := range specs {
		if s.Base.Addr().Is6() == v6 {
			parts = append(parts, s.String())
		}
	}
	if len(parts) == 0 {
		return "none configured"
	}
	return strings.Join(parts, "; ")
}
