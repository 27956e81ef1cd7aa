package ipam

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestBookOwners(t *testing.T) {
	p, err := NewPool(netip.MustParsePrefix("10.1.0.0/24"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBook(p)
	a, err := b.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	const mac = "02:42:0a:01:00:02"
	for _, tc := range []struct {
		name    string
		do      func()
		owner   string
		want    netip.Addr
		wantHas bool
	}{
		{"nothing recorded yet", func() {}, mac, netip.Addr{}, false},
		{"empty owner records nothing", func() { b.SetOwner(a, "") }, "", netip.Addr{}, false},
		{"owner recorded", func() { b.SetOwner(a, mac) }, mac, a, true},
		{"released forgets the owner", func() { b.Release(a) }, mac, netip.Addr{}, false},
	} {
		tc.do()
		got, ok := b.Owned(tc.owner)
		if got != tc.want || ok != tc.wantHas {
			t.Errorf("%s: Owned(%q) = %v, %v; want %v, %v", tc.name, tc.owner, got, ok, tc.want, tc.wantHas)
		}
	}
	if b.InUse(a) {
		t.Errorf("released %v still in use", a)
	}
}

// A request for an address whose store write is in flight waits for it,
// and the caller's lock is free meanwhile.
func TestBookWaitsForWrite(t *testing.T) {
	p, _ := NewPool(netip.MustParsePrefix("10.1.0.0/24"), netip.Prefix{})
	b := NewBook(p)
	a := netip.MustParseAddr("10.1.0.9")
	var mu sync.Mutex
	mu.Lock()
	if b.Wait(&mu, a) {
		t.Fatal("waited with no write in flight")
	}
	writing, finish := make(chan struct{}), make(chan struct{})
	go func() {
		mu.Lock()
		defer mu.Unlock()
		b.Write(&mu, a, func() error { close(writing); <-finish; return nil })
	}()
	mu.Unlock()
	<-writing
	mu.Lock() // free while the write runs
	go func() { time.Sleep(20 * time.Millisecond); close(finish) }()
	if !b.Wait(&mu, a) {
		t.Fatal("did not wait for the write in flight")
	}
	mu.Unlock()
}

func TestReservedHost(t *testing.T) {
	for _, tc := range []struct{ pool, addr, want string }{
		{"10.1.0.0/24", "10.1.0.0", "network"},
		{"10.1.0.0/24", "10.1.0.255", "broadcast"},
		{"10.1.0.0/24", "10.1.0.7", ""},
		{"10.1.0.0/31", "10.1.0.0", ""},
		{"fd00::/64", "fd00::", ""},
	} {
		if got := ReservedHost(netip.MustParsePrefix(tc.pool), netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("ReservedHost(%s, %s) = %q, want %q", tc.pool, tc.addr, got, tc.want)
		}
	}
}
