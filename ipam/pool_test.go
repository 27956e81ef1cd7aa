package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

var (
	mustPrefix = netip.MustParsePrefix
	mustAddr   = netip.MustParseAddr
)

func TestNewPoolValidation(t *testing.T) {
	for _, tc := range []struct {
		subnet, rng string
		ok          bool
	}{
		{"10.0.0.0/24", "", true},
		{"10.0.0.0/24", "10.0.0.128/25", true},
		{"10.0.0.1/24", "", false},              // host bits
		{"10.0.0.0/24", "10.0.1.0/25", false},   // range outside
		{"10.0.0.0/24", "10.0.0.0/23", false},   // range larger
		{"10.0.0.0/24", "10.0.0.129/25", false}, // range not canonical
		{"10.0.0.0/24", "fd00::/64", false},     // family mismatch
		{"fd00::/64", "fd00::8000:0:0:0/65", true},
		{"::ffff:10.0.0.0/120", "", false}, // v4-mapped
	} {
		t.Run(tc.subnet+"_"+tc.rng, func(t *testing.T) {
			var rng netip.Prefix
			if tc.rng != "" {
				rng = mustPrefix(tc.rng)
			}
			_, err := NewPool(mustPrefix(tc.subnet), rng)
			if (err == nil) != tc.ok {
				t.Fatalf("NewPool = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

// TestAllocateCounts checks how many addresses each subnet size yields:
// network and broadcast excluded, except on point-to-point sizes.
func TestAllocateCounts(t *testing.T) {
	for _, tc := range []struct {
		subnet, rng string
		want        int
		first       string
	}{
		{"10.0.0.0/30", "", 2, "10.0.0.1"},
		{"10.0.0.0/31", "", 2, "10.0.0.0"},
		{"10.0.0.0/32", "", 1, "10.0.0.0"},
		{"10.0.0.0/29", "", 6, "10.0.0.1"},
		{"10.0.0.0/24", "", 254, "10.0.0.1"},
		{"10.0.0.0/24", "10.0.0.128/26", 64, "10.0.0.128"},
		{"10.0.0.0/24", "10.0.0.192/26", 63, "10.0.0.192"}, // broadcast is in the range
		{"10.0.0.0/24", "10.0.0.0/26", 63, "10.0.0.1"},     // network address is in the range
		{"fd00::/120", "", 255, "fd00::1"},                 // no broadcast in IPv6
		{"fd00::/127", "", 2, "fd00::"},
	} {
		t.Run(tc.subnet+"_"+tc.rng, func(t *testing.T) {
			var rng netip.Prefix
			if tc.rng != "" {
				rng = mustPrefix(tc.rng)
			}
			p, err := NewPool(mustPrefix(tc.subnet), rng)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[netip.Addr]bool{}
			for i := 0; ; i++ {
				a, err := p.Allocate()
				if errors.Is(err, ErrExhausted) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 && a.String() != tc.first {
					t.Errorf("first address %s, want %s", a, tc.first)
				}
				if seen[a] || !p.Range().Contains(a) {
					t.Fatalf("allocation %d: %s is a duplicate or outside %s", i, a, p.Range())
				}
				seen[a] = true
			}
			if len(seen) != tc.want || p.Len() != tc.want {
				t.Fatalf("allocated %d (Len %d), want %d", len(seen), p.Len(), tc.want)
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	p, _ := NewPool(mustPrefix("10.0.0.0/29"), netip.Prefix{})
	a1, _ := p.Allocate()
	a2, _ := p.Allocate()
	p.Release(a1)
	a3, _ := p.Allocate()
	if a3 == a1 {
		t.Fatalf("released %s was handed out again at once", a1)
	}
	if want := mustAddr("10.0.0.3"); a3 != want || a2 != mustAddr("10.0.0.2") {
		t.Fatalf("got %s, %s; want 10.0.0.2, %s", a2, a3, want)
	}
	// Exhaust the rest; the freed a1 comes back only after wrapping.
	var last netip.Addr
	for {
		a, err := p.Allocate()
		if err != nil {
			break
		}
		last = a
	}
	if last != a1 {
		t.Fatalf("last allocation before exhaustion = %s, want the wrapped-around %s", last, a1)
	}
}

func TestReserveRelease(t *testing.T) {
	p, _ := NewPool(mustPrefix("10.0.0.0/24"), mustPrefix("10.0.0.128/25"))
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"10.0.0.1", nil}, // gateway outside the range but inside the subnet
		{"10.0.0.1", ErrInUse},
		{"10.0.0.0", ErrOutOfRange},
		{"10.0.0.255", ErrOutOfRange},
		{"10.0.1.1", ErrOutOfRange},
		{"fd00::1", ErrOutOfRange},
		{"10.0.0.200", nil},
	} {
		if err := p.Reserve(mustAddr(tc.addr)); !errors.Is(err, tc.want) {
			t.Errorf("Reserve(%s) = %v, want %v", tc.addr, err, tc.want)
		}
	}
	if !p.Release(mustAddr("10.0.0.200")) || p.Release(mustAddr("10.0.0.200")) {
		t.Error("Release should report true once, then false")
	}
	if p.Release(mustAddr("192.0.2.1")) {
		t.Error("releasing a foreign address reported true")
	}
	if got := fmt.Sprint(p.Used()); got != "[10.0.0.1]" {
		t.Errorf("Used() = %s", got)
	}
}

func TestCursorRestore(t *testing.T) {
	p, _ := NewPool(mustPrefix("10.0.0.0/24"), netip.Prefix{})
	for i := 0; i < 5; i++ {
		p.Allocate()
	}
	q, _ := NewPool(mustPrefix("10.0.0.0/24"), netip.Prefix{})
	for _, a := range p.Used() {
		q.Reserve(a)
	}
	q.Release(mustAddr("10.0.0.2"))
	q.SetCursor(p.Cursor())
	if a, _ := q.Allocate(); a != mustAddr("10.0.0.6") {
		t.Fatalf("after restore got %s, want 10.0.0.6", a)
	}
}

func TestIPv6LargeSubnet(t *testing.T) {
	p, err := NewPool(mustPrefix("fd00:1::/48"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Reserve(mustAddr("fd00:1::ffff:ffff:ffff:ffff")); err != nil {
		t.Fatal(err)
	}
	a, err := p.Allocate()
	if err != nil || a != mustAddr("fd00:1::1") {
		t.Fatalf("Allocate = %s, %v", a, err)
	}
	if p.FirstUsable() != mustAddr("fd00:1::1") {
		t.Fatalf("FirstUsable = %s", p.FirstUsable())
	}
}

func TestNextFree(t *testing.T) {
	specs := []PoolSpec{
		{Base: mustPrefix("10.213.0.0/23"), Size: 24},
		{Base: mustPrefix("fd42::/47"), Size: 48},
		{Base: mustPrefix("10.214.0.0/16"), Size: 16},
	}
	for _, tc := range []struct {
		name string
		v6   bool
		busy []string
		want string
	}{
		{"empty", false, nil, "10.213.0.0/24"},
		{"first held", false, []string{"10.213.0.0/24"}, "10.213.1.0/24"},
		{"host route inside", false, []string{"10.213.0.7/32"}, "10.213.1.0/24"},
		{"covering route", false, []string{"10.213.0.0/16"}, "10.214.0.0/16"},
		{"all busy", false, []string{"10.0.0.0/8"}, ""},
		{"v6", true, []string{"fd42::/48"}, "fd42:0:1::/48"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var busy []netip.Prefix
			for _, b := range tc.busy {
				busy = append(busy, mustPrefix(b))
			}
			got, err := NextFree(specs, tc.v6, busy)
			if tc.want == "" {
				if !errors.Is(err, ErrExhausted) {
					t.Fatalf("NextFree = %s, %v; want ErrExhausted", got, err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("NextFree = %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestParsePoolSpec(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"base=10.213.0.0/16,size=24", true},
		{"size=24,base=10.213.0.0/16", true},
		{"base=fd00::/48,size=64", true},
		{"base=10.213.0.1/16,size=24", false},
		{"base=10.213.0.0/16,size=8", false},
		{"base=10.213.0.0/16,size=33", false},
		{"base=10.213.0.0/16", false},
		{"base=10.213.0.0/16,size=x", false},
		{"base=10.213.0.0/16,size=24,color=red", false},
		{"10.0.0.0/8", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if _, err := ParsePoolSpec(tc.in); (err == nil) != tc.ok {
				t.Fatalf("ParsePoolSpec(%q) = %v, want ok=%v", tc.in, err, tc.ok)
			}
		})
	}
}

// BenchmarkAllocateNearlyFull allocates and releases one address in a /16
// with a single free slot: round-robin must scan almost the whole subnet.
func BenchmarkAllocateNearlyFull(b *testing.B) {
	p, _ := NewPool(mustPrefix("10.0.0.0/16"), netip.Prefix{})
	for {
		if _, err := p.Allocate(); err != nil {
			break
		}
	}
	hole := mustAddr("10.0.128.1")
	p.Release(hole)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a, err := p.Allocate()
		if err != nil {
			b.Fatal(err)
		}
		p.Release(a)
	}
}
