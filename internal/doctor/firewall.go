package doctor

import (
	"fmt"
	"os"
	"os/exec"
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
		const why = ": a drop of one backend's forward chain is not undone by an accept of the other's, so Docker's and mynet's policies do not combine as documented"
		switch flag, known := d.daemonFirewallFlag(); {
		case known && flag != model.FirewallAuto:
			d.add("firewall_backend", statusProblem, msg+why+"; mynet runs with --firewall "+flag+", which never follows dockerd",
				"run mynet with --firewall auto (the default), which follows dockerd's backend, or --firewall "+docker+", then restart it\n"+d.t.Restart)
		case known:
			// Under auto the next pass moves the rules: a mismatch that
			// lasts means the move failed.
			d.add("firewall_backend", statusProblem, msg+why+"; mynet (--firewall auto) moves its rules at its next reconcile pass, so a mismatch that lasts means the move failed",
				d.reconcileFix("moves them"))
		default:
			d.add("firewall_backend", statusProblem, msg+why,
				"run mynet with --firewall auto (the default), which follows dockerd's backend, then restart it\n"+d.t.Restart)
		}
	default:
		d.add("firewall_backend", statusOK, msg, "")
	}
	return own
}

// daemonFirewallFlag is the daemon's --firewall as its command line says
// (auto when absent); known is false when the daemon's process is not
// known or its command line cannot be read.
func (d *doctor) daemonFirewallFlag() (flag string, known bool) {
	if d.pid <= 0 {
		return "", false
	}
	args, err := d.cmdline(d.pid)
	if err != nil {
		return "", false
	}
	return firewallFlag(args), true
}

// procCmdline reads a process's arguments.
func procCmdline(pid int) ([]string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00"), nil
}

// firewallFlag returns --firewall's value in args as Go's flag package
// reads it (-firewall or --firewall, with "=" or the next argument; the
// last one wins; none after "--"), auto when there is none.
func firewallFlag(args []string) string {
	flag := model.FirewallAuto
	for i, a := range args {
		if a == "--" {
			break
		}
		name, ok := strings.CutPrefix(a, "-")
		if !ok {
			continue
		}
		name = strings.TrimPrefix(name, "-")
		if v, ok := strings.CutPrefix(name, "firewall="); ok {
			flag = v
		} else if name == "firewall" && i+1 < len(args) {
			flag = args[i+1]
		}
	}
	return flag
}

// checkNFTForwardPolicy reports an iptables FORWARD policy of DROP while
// mynet's rules are in nftables. Every base chain on the forward hook
// sees the packet, and a drop in any of them is final: the policy of
// iptables-nft's FORWARD chain (Docker 20-28 set it to DROP when they
// turned forwarding on) drops what mynet's nftables chain accepted, so
// no container of a mynet network reaches anything beyond its bridge.
// Docker 29's nftables backend leaves the same thing to the operator, and
// so does mynet: the chain is not mynet's. Accept rules for mynet's
// bridges ahead of the policy count as the fix.
func (d *doctor) checkNFTForwardPolicy() {
	var dropping []string
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if forwardDrops(d.forwardRules(cmd)) {
			dropping = append(dropping, cmd)
		}
	}
	if len(dropping) == 0 {
		d.add("forward_policy", statusOK, "mynet's rules are in nftables and no iptables FORWARD policy drops what they accept", "")
		return
	}
	var fix []string
	for _, cmd := range dropping {
		fix = append(fix, cmd+" -I FORWARD -i "+bridgeWildcard+" -j ACCEPT", cmd+" -I FORWARD -o "+bridgeWildcard+" -j ACCEPT")
	}
	d.add("forward_policy", statusProblem,
		"mynet's rules are in nftables, but the FORWARD policy of "+strings.Join(dropping, " and ")+
			" is DROP: a drop in any forward chain is final, so it drops the traffic of mynet's networks that mynet's own chain accepted "+
			"(accepting mynet's bridges there only stops the second filter; mynet's chain still drops what it must)",
		strings.Join(fix, "\n"))
}

// bridgeWildcard matches every mynet bridge in an iptables rule.
const bridgeWildcard = model.BridgePrefix + "+"

// forwardDrops reports whether a FORWARD chain, as `iptables -S FORWARD`
// prints it, drops by policy and lets neither direction of mynet's bridges
// through before it.
func forwardDrops(rules []string) bool {
	drop, in, out := false, false, false
	for _, l := range rules {
		switch strings.TrimSpace(l) {
		case "-P FORWARD DROP":
			drop = true
		case "-A FORWARD -i " + bridgeWildcard + " -j ACCEPT":
			in = true
		case "-A FORWARD -o " + bridgeWildcard + " -j ACCEPT":
			out = true
		}
	}
	return drop && !(in && out)
}

// iptablesForward is the filter table's FORWARD chain as cmd (iptables or
// ip6tables) prints it with -S; nil when it cannot be read.
func iptablesForward(cmd string) []string {
	out, err := exec.Command(cmd, "-w", "-S", "FORWARD").Output()
	if err != nil {
		return nil
	}
	return strings.Split(string(out), "\n")
}
