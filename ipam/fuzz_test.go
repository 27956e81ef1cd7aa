package ipam

import (
	"net/netip"
	"testing"
)

// FuzzPool runs a sequence of operations from the fuzzer's bytes against a
// small pool and checks the invariants after each: no address handed out
// twice, every address inside the subnet (allocations inside the range),
// and Len equal to the number of addresses in use.
func FuzzPool(f *testing.F) {
	f.Add(uint8(26), uint8(28), []byte{0, 0, 1, 5, 2, 3, 0})
	f.Add(uint8(126), uint8(127), []byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, bits, rngBits uint8, ops []byte) {
		subnet := netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 24+int(bits)%9)
		rng := subnet
		if b := subnet.Bits() + int(rngBits)%3; b <= 32 {
			rng = netip.PrefixFrom(subnet.Addr(), b)
		}
		p, err := NewPool(subnet, rng)
		if err != nil {
			t.Fatal(err)
		}
		used := map[netip.Addr]bool{}
		for i, op := range ops {
			a := p.prefix.Addr()
			for range int(op >> 2) {
				a = a.Next()
			}
			switch op % 3 {
			case 0:
				got, err := p.Allocate()
				if err != nil {
					continue
				}
				if used[got] || !rng.Contains(got) {
					t.Fatalf("op %d: Allocate gave %s (used %v, range %s)", i, got, used[got], rng)
				}
				used[got] = true
			case 1:
				if p.Reserve(a) == nil {
					if used[a] || !subnet.Contains(a) {
						t.Fatalf("op %d: Reserve(%s) succeeded twice or outside", i, a)
					}
					used[a] = true
				}
			case 2:
				if p.Release(a) != used[a] {
					t.Fatalf("op %d: Release(%s) disagrees with the model", i, a)
				}
				delete(used, a)
			}
			if p.Len() != len(used) {
				t.Fatalf("op %d: Len %d, model %d", i, p.Len(), len(used))
			}
		}
	})
}
