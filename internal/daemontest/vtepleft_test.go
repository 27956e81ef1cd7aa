package daemontest

import (
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
)

// TestSingleHostRemovesLeftoverVTEPFilter: the VXLAN port's filter that a
// run in cluster mode left (its peers agent removes it with the last
// cluster network, or at its own start; a daemon restarted without
// --cluster-store has no agent) goes when mynet starts in single-host
// mode, and other rules on the port stay.
func TestSingleHostRemovesLeftoverVTEPFilter(t *testing.T) {
	ns := newNS(t)
	d := startDaemon(t, ns)
	d.stop()
	chain := model.VXLANChain(d.name)
	ns.run(t, "iptables", "-N", chain)
	ns.run(t, "iptables", "-A", chain, "-s", "198.19.77.12/32", "-j", "ACCEPT")
	ns.run(t, "iptables", "-A", chain, "-j", "DROP")
	ns.run(t, "iptables", "-I", "INPUT", "1", "-p", "udp", "--dport", "8472", "-m", "comment", "--comment", model.HookComment(d.name), "-j", chain)
	ns.run(t, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-m", "comment", "--comment", "host rule", "-j", "ACCEPT")
	d.start("")
	rules := ns.run(t, "iptables-save", "-t", "filter")
	if strings.Contains(rules, chain) {
		t.Errorf("the VXLAN port filter is still there after a single-host start:\n%s", rules)
	}
	if !strings.Contains(rules, "host rule") {
		t.Errorf("a rule not mynet's on the port was removed:\n%s", rules)
	}
}
