package bridge

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil/failpoint"
	"github.com/mynet/mynet/netutil/nstest"
)

// cancelOnRule is the real iptables, which cancels a context once a given
// number of transactions that add mynet's rules have been committed: a
// deadline that passes between the families of one operation.
type cancelOnRule struct {
	IPTables
	mu     sync.Mutex
	left   int
	cancel func()
}

func (c *cancelOnRule) arm(n int, cancel func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.left, c.cancel = n, cancel
}

func (c *cancelOnRule) Restore(input string) error {
	err := c.IPTables.Restore(input)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel == nil || !strings.Contains(input, "-A ") || !strings.Contains(input, "mynet net=") {
		return err
	}
	if c.left--; c.left == 0 {
		c.cancel()
		c.cancel = nil
	}
	return err
}

// TestDeadlineStopsEnsure: the ensure methods stop at the first step after
// their context is done, with an error that wraps its cause, and leave the
// namespace as it was before the call: when a kernel step outlasts the
// deadline (a stalled failpoint), and when the deadline passes in the
// middle of an operation, between its families.
func TestDeadlineStopsEnsure(t *testing.T) {
	nstest.RequireCommand(t, "iptables")
	stop := errors.New("the test's deadline")
	for _, tc := range []struct {
		name      string
		failpoint string
		run       func(ctx context.Context, d *Dataplane, ipt *cancelOnRule, cancel func()) error
	}{
		{"network, bridge step stalled", "bridge.network.bridge=sleep(300ms)", func(ctx context.Context, d *Dataplane, _ *cancelOnRule, _ func()) error {
			return d.EnsureNetwork(ctx, testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24"))
		}},
		{"network, deadline between the families", "", func(ctx context.Context, d *Dataplane, ipt *cancelOnRule, cancel func()) error {
			ipt.arm(1, cancel)
			n := testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
			n.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:2::/64"), Gateway: netip.MustParsePrefix("fd00:2::1/64")}}
			return d.EnsureNetwork(ctx, n)
		}},
		{"endpoint, veth step stalled", "bridge.endpoint.veth=sleep(300ms)", func(ctx context.Context, d *Dataplane, _ *cancelOnRule, _ func()) error {
			return d.EnsureEndpoint(ctx, testEndpoint(testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24"), eid1))
		}},
		{"ports, deadline between the families", "", func(ctx context.Context, d *Dataplane, ipt *cancelOnRule, cancel func()) error {
			n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
			c := testEndpoint(n, eid1)
			ipt.arm(1, cancel)
			return d.EnsurePorts(ctx, n, c, []model.PortMapping{
				{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c4(), Port: 80},
				{Proto: "udp", HostPort: 5353, HostPortEnd: 5353, ContainerIP: netip.MustParseAddr("fd00:1::2"), Port: 53},
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := failpoint.Enable(tc.failpoint); err != nil {
				t.Fatal(err)
			}
			defer failpoint.Enable("")
			nstest.Run(t, func() {
				d, ipt := newCancellableDataplane(t)
				defer d.Close()
				// One network exists already: what the call adds to it must
				// go, what was there must stay.
				n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
				if err := d.EnsureNetwork(context.Background(), n); err != nil {
					t.Fatal(err)
				}
				before := snapshot(t)
				ctx, cancel := context.WithCancelCause(context.Background())
				defer cancel(nil)
				if tc.failpoint != "" { // the stalled step outlasts it
					var cancelT func()
					ctx, cancelT = context.WithTimeoutCause(ctx, 100*time.Millisecond, stop)
					defer cancelT()
				}
				err := tc.run(ctx, d, ipt, func() { cancel(stop) })
				if !errors.Is(err, stop) || !strings.Contains(err.Error(), "stopped before") {
					t.Fatalf("got %v, want an error that names the step it stopped before and wraps the deadline's cause", err)
				}
				d.Sync()
				if after := snapshot(t); after != before {
					t.Fatalf("the call cut short left changes:\n--- before\n%s--- after\n%s", before, after)
				}
				// Without a deadline the same call succeeds.
				failpoint.Enable("")
				if err := tc.run(context.Background(), d, ipt, func() {}); err != nil {
					t.Fatalf("without a deadline: %v", err)
				}
			})
		})
	}
}

func c4() netip.Addr { return netip.MustParseAddr("10.1.0.2") }

func newCancellableDataplane(t *testing.T) (*Dataplane, *cancelOnRule) {
	t.Helper()
	nl, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat"} {
			run(t, cmd, "-t", table, "-N", "PRIME")
			run(t, cmd, "-t", table, "-X", "PRIME")
		}
	}
	real, err := newIPTables(false)
	if err != nil {
		t.Fatal(err)
	}
	ipt := &cancelOnRule{IPTables: real}
	d, err := New(Config{Instance: "mynet-test", Netlink: nl, IPv4: ipt})
	if err != nil {
		t.Fatal(err)
	}
	return d, ipt
}
