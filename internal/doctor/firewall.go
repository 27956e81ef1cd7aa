package doctor

import (
	"fmt"
	"os"
	"strings"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/model"
)

// checkFirewall reports which firewall backend holds dockerd's rules and
// which holds mynet's (serve --firewall), and returns mynet's: "" when it
// has none yet, "both" when a run on the other backend left some.
func (d *doctor) checkFirewall() string {
	if os.Geteuid() != 0 {
		d.add("firewall_backend", statusSkipped, "reading the firewall needs root: run mynet doctor as root", "")
		return ""
	}
	u := bridge.DetectFirewalls(d.t.Instance)
	docker, own := u.Docker(), u.Own()
	describe := func(b string) string {
		switch b {
		case "":
			return "none found"
		case model.FirewallNFTables:
			return "nftables"
		case model.FirewallIPTables:
			return "iptables"
		}
		return "iptables and nftables"
	}
	msg := fmt.Sprintf("dockerd's rules: %s; mynet's: %s (table ip/ip6 %s, or chains %s-*)", describe(docker), describe(own), model.NFTTableName(d.t.Instance), strings.TrimSuffix(model.ChainsFor(d.t.Instance).Forward, "-FORWARD"))
	switch {
	case own == "both":
		d.add("firewall_backend", statusProblem, msg+": one set is left over from a run on the other backend and filters with a stale policy",
			"restart mynet: at startup it removes its rules from the backend it does not use\n"+d.t.Restart)
	case own != "" && docker != "" && own != docker:
		d.add("firewall_backend", statusProblem, msg+": a drop of one backend's forward chain is not undone by an accept of the other's, so Docker's and mynet's policies do not combine as documented",
			"run mynet with --firewall auto (the default), which follows dockerd's backend, then restart it\n"+d.t.Restart)
	default:
		d.add("firewall_backend", statusOK, msg, "")
	}
	return own
}
