package e2e

import (
	"slices"
	"testing"
)

// TestE2EContainerIfacePrefix: with container_iface_prefix the engine
// names the container's interface <prefix>0 from Join's DstPrefix; a
// network without it keeps eth0 (the control).
func TestE2EContainerIfacePrefix(t *testing.T) {
	s := newScenario(t)
	withPrefix := s.mynetNetwork("lan", "10.182.1.0/24", "-o", "com.docker.network.container_iface_prefix=lan")
	plain := s.mynetNetwork("plain", "10.182.2.0/24")
	for _, tc := range []struct{ network, want, not string }{{withPrefix, "lan0", "eth0"}, {plain, "eth0", "lan0"}} {
		links := linkNames(s.runOnce("links", tc.network, "ip", "-o", "link", "show"))
		if !slices.Contains(links, tc.want) || slices.Contains(links, tc.not) {
			t.Errorf("network %s: container links %v, want %s and no %s", tc.network, links, tc.want, tc.not)
		}
	}
}
