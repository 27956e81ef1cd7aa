package e2e

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// reconcileInterval is the plugin's --reconcile-interval, its default: the
// suite starts it without the flag.
const reconcileInterval = 5 * time.Second

// TestE2EBridgeDeleted: someone deletes a network's bridge (ip link del),
// which releases its ports, and sends no signal. The periodic reconcile
// brings the bridge back and puts the containers' veths on it again, so
// that they reach each other and the host within two intervals; then
// removing the network leaves nothing behind (the scenario's leak check).
func TestE2EBridgeDeleted(t *testing.T) {
	requirePlugin(t)
	s := newScenario(t)
	subnet := netip.MustParsePrefix("10.171.1.0/24")
	n := s.mynetNetwork("net", subnet.String())
	a, b := s.container("a", n), s.container("b", n)
	addrs := s.ips(n, a, b)
	s.expectPing(a, addrs[1].String())

	br := "mn-" + docker(t, "network", "inspect", "-f", "{{.Id}}", n)[:12]
	mustRun(t, "ip", "link", "del", br)
	env.plugin.note("%s: deleted bridge %s", t.Name(), br)
	// Two intervals, and the time a pass and a ping take.
	var out string
	took, err := eventually(2*reconcileInterval+3*time.Second, func() error {
		var ok bool
		if out, ok = s.ping(a, addrs[1].String(), 1); !ok {
			return errors.New("no reply")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ping from %s to %s still fails %v after its bridge %s was deleted:\n%s", a, b, took.Round(time.Millisecond), br, out)
	}
	t.Logf("connectivity back %v after the bridge was deleted", took.Round(time.Millisecond))
	s.expectPing(b, addrs[0].String())
	s.expectPing(hostNS, addrs[0].String())
	s.expectOnlyEth0(a, gateway(subnet))
}
