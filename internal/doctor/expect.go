package doctor

// The rules each network and each family should have, as the dataplane
// defines them, against the rules iptables lists.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/mynet/mynet/bridge"
	"github.com/mynet/mynet/internal/driver"
	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
)

// keyOptions are the options that decide what a rule matches and does,
// and which iptables lists the same way in every version: the rest (the
// order of matches, "-m" modules, addrtype) may be printed differently
// from how mynet wrote it.
var keyOptions = map[string]bool{
	"-s": true, "-d": true, "-i": true, "-o": true, "-p": true, "--dport": true,
	"--ctstate": true, "--comment": true, "-j": true, "--to-destination": true,
}

// ruleKey reduces a rule to its table, chain and key options, each with
// its negation, in a fixed order.
func ruleKey(table, chain string, args []string) string {
	var parts []string
	for i := 0; i+1 < len(args); i++ {
		if !keyOptions[args[i]] {
			continue
		}
		v := args[i+1]
		switch args[i] {
		case "-s", "-d":
			// iptables lists a prefix masked, a host with its /32 or /128.
			if p, err := netip.ParsePrefix(v); err == nil {
				v = p.Masked().String()
			} else if a, err := netip.ParseAddr(v); err == nil {
				v = netip.PrefixFrom(a, a.BitLen()).String()
			}
		case "--ctstate":
			states := strings.Split(v, ",")
			slices.Sort(states)
			v = strings.Join(states, ",")
		}
		part := args[i] + " " + v
		if i > 0 && args[i-1] == "!" {
			part = "! " + part
		}
		parts = append(parts, part)
	}
	slices.Sort(parts)
	return table + " " + chain + " " + strings.Join(parts, " ")
}

// splitRule splits an `iptables -S` line "-A CHAIN ARGS" into the chain
// and the arguments, with double-quoted arguments (comments) unquoted.
func splitRule(line string) (chain string, args []string, ok bool) {
	rest, ok := strings.CutPrefix(line, "-A ")
	if !ok {
		return "", nil, false
	}
	var cur strings.Builder
	quoted, inArg := false, false
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		switch {
		case c == '\\' && quoted && i+1 < len(rest):
			i++
			cur.WriteByte(rest[i])
		case c == '"':
			quoted, inArg = !quoted, true
		case c == ' ' && !quoted:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
			}
			inArg = false
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	if len(args) == 0 {
		return "", nil, false
	}
	return args[0], args[1:], true
}

// ruleKeys returns the keys of the rules listed in one backend, by family.
func ruleKeys(sc scan, backend string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, td := range sc.dumps {
		if td.backend != backend {
			continue
		}
		if out[td.family] == nil {
			out[td.family] = map[string]bool{}
		}
		for _, l := range td.lines {
			if chain, args, ok := splitRule(l); ok {
				out[td.family][ruleKey(td.table, chain, args)] = true
			}
		}
	}
	return out
}

// missingIn returns the rules of want that neither read lists: a rule
// that a request adds or deletes while the doctor looks is not reported.
func missingIn(want []bridge.RuleSpec, family string, keys1, keys2 map[string]map[string]bool) []bridge.RuleSpec {
	var out []bridge.RuleSpec
	for _, r := range want {
		k := ruleKey(r.Table, r.Chain, r.Args)
		if !keys1[family][k] && !keys2[family][k] {
			out = append(out, r)
		}
	}
	return out
}

// checkNetworkRules reports, for each network that has some rules in a
// family, the rules of its own that are gone, named by chain with what
// their loss breaks. A network with no rules at all is checkMissingRules'.
func (d *doctor) checkNetworkRules(st1, st2 *plugin.Dump, sc1, sc2 scan, backend string, withRules map[string]bool) {
	keys1, keys2 := ruleKeys(sc1, backend), ruleKeys(sc2, backend)
	for _, n := range stableNetworks(st1, st2) {
		mn := driver.ModelNetwork(&n)
		for _, fam := range []string{"iptables", "ip6tables"} {
			if !withRules[fam+" "+n.ID] || keys2[fam] == nil {
				continue
			}
			missing := missingIn(bridge.NetworkRules(d.t.Instance, fam == "ip6tables", mn), fam, keys1, keys2)
			if len(missing) == 0 {
				continue
			}
			var what []string
			for _, r := range missing {
				w := fmt.Sprintf("%s (%s): %s", r.Chain, r.Table, d.chainLoss(r.Chain))
				if !slices.Contains(what, w) {
					what = append(what, w)
				}
			}
			d.add("missing_rules", statusProblem, fmt.Sprintf("network %s lacks %d %s rule%s of its own: %s", d.networkName(n.ID), len(missing), fam, plural(len(missing)), strings.Join(what, "; ")), d.reconcileFix(rebuilds))
		}
	}
}

// chainLoss says what a network loses with its rules in one of the
// instance's chains.
func (d *doctor) chainLoss(chain string) string {
	c := model.ChainsFor(d.t.Instance)
	switch chain {
	case c.Forward:
		return "replies to its containers, or the traffic between them, are not accepted"
	case c.Isolation:
		return "its isolation from other networks and the outside is incomplete"
	case c.LAN:
		return "its containers are let into networks of gateway mode nat-unprotected as if they were LAN hosts"
	case c.Postrouting:
		return "its egress, or the host's connections to its published ports, are not masqueraded"
	case c.Direct:
		return "its direct-routing protection is off or incomplete: a LAN host that routes its subnet through this host reaches unpublished container ports"
	}
	return "its rules there are incomplete"
}

// checkChainRules reports the rules that tie the instance's chains
// together, in each family some network has rules in: the jumps from the
// built-in chains, the forward chain's jump into the isolation chain and
// the LAN chain's closing ACCEPT.
func (d *doctor) checkChainRules(sc1, sc2 scan, backend string, withRules map[string]bool) {
	keys1, keys2 := ruleKeys(sc1, backend), ruleKeys(sc2, backend)
	for _, fam := range []string{"iptables", "ip6tables"} {
		if keys2[fam] == nil || !familyHasRules(withRules, fam) {
			continue
		}
		v6 := fam == "ip6tables"
		// The forward hook may be in either place (ensureHooks moves it
		// when Docker starts), so it is missing only when it is in neither.
		inForward := missingIn(bridge.ChainRules(d.t.Instance, v6, "FORWARD"), fam, keys1, keys2)
		inUser := missingIn(bridge.ChainRules(d.t.Instance, v6, bridge.DockerUserChain), fam, keys1, keys2)
		for _, r := range inForward {
			if r.Chain == "FORWARD" && !slices.ContainsFunc(inUser, func(u bridge.RuleSpec) bool { return u.Chain == bridge.DockerUserChain }) {
				continue
			}
			d.add("missing_rules", statusProblem, d.chainRuleLoss(fam, r), d.reconcileFix(rebuilds))
		}
	}
}

func familyHasRules(withRules map[string]bool, fam string) bool {
	for k := range withRules {
		if strings.HasPrefix(k, fam+" ") {
			return true
		}
	}
	return false
}

// chainRuleLoss describes a missing rule of ChainRules and what its loss
// breaks.
func (d *doctor) chainRuleLoss(fam string, r bridge.RuleSpec) string {
	c := model.ChainsFor(d.t.Instance)
	target := ""
	if len(r.Args) >= 2 && r.Args[len(r.Args)-2] == "-j" {
		target = r.Args[len(r.Args)-1]
	}
	from := r.Chain
	if r.Chain == "FORWARD" {
		from = "FORWARD or " + bridge.DockerUserChain
	}
	jump := fmt.Sprintf("no jump from %s %s into %s (%s): ", r.Table, from, target, fam)
	switch {
	case target == c.Forward:
		return fmt.Sprintf("no jump from FORWARD or DOCKER-USER into %s (%s): mynet's drops and accepts are never reached, so with a DROP policy its containers cannot reach anything, and with ACCEPT nothing isolates them", c.Forward, fam)
	case target == c.Postrouting:
		return jump + "egress from mynet's networks is not masqueraded"
	case target == c.DNAT && r.Chain == "OUTPUT":
		return jump + "published ports cannot be reached from the host itself"
	case target == c.DNAT:
		return jump + "published ports cannot be reached from other hosts or containers"
	case target == c.Direct:
		return jump + "direct-routing protection is off: a LAN host that routes a network's subnet through this host reaches unpublished container ports"
	case target == c.Isolation:
		return jump + "no isolation drop is reached: mynet's networks are open to each other, to Docker's and to the LAN"
	}
	// The LAN chain's closing ACCEPT.
	return fmt.Sprintf("rule -A %s %s (%s, %s) is missing: networks of gateway mode nat-unprotected are closed to the LAN", r.Chain, strings.Join(r.Args, " "), r.Table, fam)
}
