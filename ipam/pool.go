package ipam

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
)

// Sentinel errors, wrapped with context by the methods that return them.
var (
	ErrExhausted  = errors.New("no free address")
	ErrInUse      = errors.New("address already in use")
	ErrOutOfRange = errors.New("address outside the pool")
	ErrInvalid    = errors.New("invalid pool")
)

// Pool allocates the addresses of one subnet.
//
// Addresses are tracked as offsets from the subnet's first address in a
// sparse bitmap of 64-bit words: a nearly full /16 is scanned a word at a
// time, and an IPv6 /64 costs memory only for the words in use. Only the
// first 2^64 addresses of a larger IPv6 subnet are allocatable.
type Pool struct {
	prefix netip.Prefix // canonical subnet
	rng    netip.Prefix // where Allocate looks; equal to prefix without a sub-range
	first  uint64       // offsets of rng within prefix, inclusive
	last   uint64
	max    uint64 // last valid offset of prefix
	cursor uint64 // offset of the address handed out last
	words  map[uint64]uint64
	count  int
}

// NewPool returns an empty pool for subnet, handing out addresses from rng
// (the zero Prefix means the whole subnet). Both must be in canonical form
// (no host bits set) and rng must lie inside subnet.
func NewPool(subnet, rng netip.Prefix) (*Pool, error) {
	if !subnet.IsValid() {
		return nil, fmt.Errorf("%w: subnet is not a valid prefix", ErrInvalid)
	}
	if subnet != subnet.Masked() {
		return nil, fmt.Errorf("%w: subnet %s has host bits set; use %s", ErrInvalid, subnet, subnet.Masked())
	}
	if subnet.Addr().Is4In6() || subnet.Addr().Zone() != "" {
		return nil, fmt.Errorf("%w: subnet %s must be plain IPv4 or IPv6", ErrInvalid, subnet)
	}
	if !rng.IsValid() {
		rng = subnet
	}
	if rng != rng.Masked() {
		return nil, fmt.Errorf("%w: ip-range %s has host bits set; use %s", ErrInvalid, rng, rng.Masked())
	}
	if rng.Addr().Is4() != subnet.Addr().Is4() || rng.Bits() < subnet.Bits() || !subnet.Contains(rng.Addr()) {
		return nil, fmt.Errorf("%w: ip-range %s is not inside subnet %s", ErrInvalid, rng, subnet)
	}
	p := &Pool{prefix: subnet, rng: rng, words: map[uint64]uint64{}}
	p.max = hostCount(subnet) - 1
	p.first, _ = p.offset(rng.Addr())
	p.last = p.first + hostCount(rng) - 1
	if p.last < p.first { // range spans 2^64 or more: clamp
		p.last = p.max
	}
	p.cursor = p.last // so the first Allocate starts at the range's start
	return p, nil
}

// hostCount is the number of addresses in p, saturated at 2^64.
func hostCount(p netip.Prefix) uint64 {
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits >= 64 {
		return 0 // 2^64 wraps to 0; callers subtract 1 and get MaxUint64
	}
	return 1 << hostBits
}

// Prefix is the pool's subnet.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Range is the part of the subnet that Allocate hands out.
func (p *Pool) Range() netip.Prefix { return p.rng }

// Len is the number of addresses in use.
func (p *Pool) Len() int { return p.count }

// FirstUsable is the address a gateway gets when none is requested.
func (p *Pool) FirstUsable() netip.Addr {
	for off := uint64(0); ; off++ {
		if !p.reserved(off) {
			return p.addr(off)
		}
	}
}

// Allocate hands out the next free address of the range after the one it
// handed out last, wrapping around once.
func (p *Pool) Allocate() (netip.Addr, error) {
	if p.cursor < p.last {
		if off, ok := p.findFree(p.cursor+1, p.last); ok {
			return p.take(off), nil
		}
	}
	if off, ok := p.findFree(p.first, p.cursor); ok {
		return p.take(off), nil
	}
	return netip.Addr{}, fmt.Errorf("%w in %s (%d addresses in use)", ErrExhausted, p.describe(), p.count)
}

// Reserve marks a specific address as used. It may lie anywhere in the
// subnet, also outside the range, as Docker's own IPAM allows for --ip,
// --gateway and --aux-address.
func (p *Pool) Reserve(a netip.Addr) error {
	off, err := p.validOffset(a)
	if err != nil {
		return err
	}
	if p.isSet(off) {
		return fmt.Errorf("%w: %s in %s", ErrInUse, a, p.prefix)
	}
	p.set(off)
	return nil
}

// Release frees a. It reports whether a was in use; releasing a free or
// foreign address is not an error, so that repeated releases are harmless.
func (p *Pool) Release(a netip.Addr) bool {
	off, ok := p.offset(a)
	if !ok || !p.isSet(off) {
		return false
	}
	p.clear(off)
	return true
}

// InUse reports whether a is allocated.
func (p *Pool) InUse(a netip.Addr) bool {
	off, ok := p.offset(a)
	return ok && p.isSet(off)
}

// Used returns the allocated addresses in ascending order.
func (p *Pool) Used() []netip.Addr {
	idx := make([]uint64, 0, len(p.words))
	for w := range p.words {
		idx = append(idx, w)
	}
	slices.Sort(idx)
	out := make([]netip.Addr, 0, p.count)
	for _, w := range idx {
		for word := p.words[w]; word != 0; word &= word - 1 {
			out = append(out, p.addr(w<<6|uint64(bits.TrailingZeros64(word))))
		}
	}
	return out
}

// Cursor is the address handed out last; SetCursor restores it after a
// restart so that round-robin continues where it left off.
func (p *Pool) Cursor() netip.Addr { return p.addr(p.cursor) }

// SetCursor restores a cursor saved from Cursor. Addresses outside the range
// are ignored: the pool then starts from the range's beginning.
func (p *Pool) SetCursor(a netip.Addr) {
	if off, ok := p.offset(a); ok && off >= p.first && off <= p.last {
		p.cursor = off
	}
}

func (p *Pool) describe() string {
	if p.rng != p.prefix {
		return fmt.Sprintf("pool %s (range %s)", p.prefix, p.rng)
	}
	return "pool " + p.prefix.String()
}

func (p *Pool) validOffset(a netip.Addr) (uint64, error) {
	off, ok := p.offset(a)
	if !ok {
		return 0, fmt.Errorf("%w: %s is not in %s", ErrOutOfRange, a, p.prefix)
	}
	if p.reserved(off) {
		return 0, fmt.Errorf("%w: %s is the network or broadcast address of %s", ErrOutOfRange, a, p.prefix)
	}
	return off, nil
}

// reserved reports the subnet's network address, and for IPv4 its broadcast
// address; /31 and /32 (and IPv6 /127, /128) have neither (RFC 3021).
func (p *Pool) reserved(off uint64) bool {
	if p.prefix.Addr().BitLen()-p.prefix.Bits() <= 1 {
		return false
	}
	return off == 0 || (p.prefix.Addr().Is4() && off == p.max)
}

func (p *Pool) take(off uint64) netip.Addr {
	p.set(off)
	p.cursor = off
	return p.addr(off)
}

// findFree returns the lowest free, non-reserved offset in [from, to].
func (p *Pool) findFree(from, to uint64) (uint64, bool) {
	for off := from; off <= to; {
		w, b := off>>6, off&63
		word := p.words[w] | (1<<b - 1) // ignore bits below off
		if word != ^uint64(0) {
			cand := w<<6 | uint64(bits.TrailingZeros64(^word))
			if cand > to {
				return 0, false
			}
			if !p.reserved(cand) {
				return cand, true
			}
			off = cand + 1
		} else {
			off = (w + 1) << 6
		}
		if off == 0 { // wrapped past MaxUint64
			return 0, false
		}
	}
	return 0, false
}

func (p *Pool) isSet(off uint64) bool { return p.words[off>>6]&(1<<(off&63)) != 0 }

func (p *Pool) set(off uint64) {
	p.words[off>>6] |= 1 << (off & 63)
	p.count++
}

func (p *Pool) clear(off uint64) {
	w := off >> 6
	p.words[w] &^= 1 << (off & 63)
	if p.words[w] == 0 {
		delete(p.words, w)
	}
	p.count--
}

// offset converts an address of the subnet into its distance from the
// subnet's first address.
func (p *Pool) offset(a netip.Addr) (uint64, bool) {
	if !a.IsValid() || a.Is4() != p.prefix.Addr().Is4() || !p.prefix.Contains(a) {
		return 0, false
	}
	hi, lo := u128(a)
	bhi, blo := u128(p.prefix.Addr())
	off, borrow := bits.Sub64(lo, blo, 0)
	if hi-bhi-borrow != 0 || off > p.max {
		return 0, false
	}
	return off, true
}

func (p *Pool) addr(off uint64) netip.Addr {
	hi, lo := u128(p.prefix.Addr())
	lo, carry := bits.Add64(lo, off, 0)
	hi += carry
	if p.prefix.Addr().Is4() {
		return netip.AddrFrom4([4]byte{byte(lo >> 24), byte(lo >> 16), byte(lo >> 8), byte(lo)})
	}
	var b [16]byte
	for i := 0; i < 8; i++ {
		b[i] = byte(hi >> (56 - 8*i))
		b[8+i] = byte(lo >> (56 - 8*i))
	}
	return netip.AddrFrom16(b)
}

func u128(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return 0, uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	}
	b := a.As16()
	for i := 0; i < 8; i++ {
		hi = hi<<8 | uint64(b[i])
		lo = lo<<8 | uint64(b[8+i])
	}
	return hi, lo
}
