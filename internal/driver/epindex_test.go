package driver

import (
	"net/netip"
	"testing"

	"github.com/mynet/mynet/state"
)

// TestEndpointIndex: the index follows adds and removes, and forgets an
// address or MAC only for the endpoint that holds it.
func TestEndpointIndex(t *testing.T) {
	b := &state.Endpoint{NetworkID: "a", ID: "b", IPv4: "10.1.0.2/24", MAC: "02:42:0a:01:00:02"}
	c := &state.Endpoint{NetworkID: "a", ID: "c", IPv4: "10.1.0.3/24", IPv6: "fd00:1::3/64"}
	dup := &state.Endpoint{NetworkID: "a", ID: "d", IPv4: "10.1.0.2/24"} // from before duplicates were refused
	x := endpointIndex{}
	for _, step := range []struct {
		name     string
		do       func()
		count    int
		addr     string
		addrWant string
		macWant  string
	}{
		{"empty", func() {}, 0, "10.1.0.2", "", ""},
		{"b added", func() { x.add(b) }, 1, "10.1.0.2", "b", "b"},
		{"c added", func() { x.add(c) }, 2, "fd00:1::3", "c", "b"},
		{"duplicate added", func() { x.add(dup) }, 3, "10.1.0.2", "d", "b"},
		{"b removed keeps d's address", func() { x.remove(b) }, 2, "10.1.0.2", "d", ""},
		{"all removed", func() { x.remove(c); x.remove(dup) }, 0, "fd00:1::3", "", ""},
	} {
		step.do()
		if got := x.count("a"); got != step.count {
			t.Errorf("%s: count %d, want %d", step.name, got, step.count)
		}
		if got := x.addrOwner("a", netip.MustParseAddr(step.addr)); got != step.addrWant {
			t.Errorf("%s: owner of %s %q, want %q", step.name, step.addr, got, step.addrWant)
		}
		if got := x.macOwner("a", b.MAC); got != step.macWant {
			t.Errorf("%s: owner of b's MAC %q, want %q", step.name, got, step.macWant)
		}
	}
	if len(x) != 0 {
		t.Errorf("an empty network is kept: %v", x)
	}
}
