package doctor

// The rules in the instance's chains against the state.

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/plugin"
)

// ownedRule is a rule in one of the instance's chains that names a network.
type ownedRule struct {
	dump            *tableDump
	chain, rest     string // rest: the line without "-A "
	network, endpnt string
}

func (d *doctor) ownedRules(sc scan, backend string) []ownedRule {
	own := instanceChains(d.t.Instance)
	var out []ownedRule
	for i := range sc.dumps {
		td := &sc.dumps[i]
		if td.backend != backend {
			continue
		}
		for _, l := range td.lines {
			rest, ok := strings.CutPrefix(l, "-A ")
			if !ok {
				continue
			}
			chain, _, _ := strings.Cut(rest, " ")
			nid, eid, ok := model.ParseRuleComment(l)
			if !own[chain] || !ok {
				continue
			}
			out = append(out, ownedRule{dump: td, chain: chain, rest: rest, network: nid, endpnt: eid})
		}
	}
	return out
}

// checkRules reports rules of networks and endpoints the state does not
// know, networks of the state without all their rules, and missing jumps
// into and between mynet's chains, in all three tables.
func (d *doctor) checkRules(st1, st2 *plugin.Dump, sc1, sc2 scan, backend string) {
	withRules := d.checkOrphanRules(st2, sc1, sc2, backend)
	d.checkMissingRules(st1, st2, sc2, backend, withRules)
	d.checkNetworkRules(st1, st2, sc1, sc2, backend, withRules)
	d.checkChainRules(sc1, sc2, backend, withRules)
}

// checkOrphanRules reports the rules, present in both reads, of networks
// and endpoints the state does not know, one finding per network and
// family. It returns the families and networks that have rules ("family
// network").
func (d *doctor) checkOrphanRules(st *plugin.Dump, sc1, sc2 scan, backend string) map[string]bool {
	nets, eps := map[string]bool{}, map[string]bool{}
	for _, n := range st.Networks {
		nets[n.ID] = true
	}
	for _, e := range st.Endpoints {
		eps[e.ID] = true
	}
	before := map[string]bool{}
	for _, r := range d.ownedRules(sc1, backend) {
		before[r.dump.family+" "+r.dump.table+" "+r.rest] = true
	}
	type group struct {
		network, family string
		chains          []string
		fixes           []string
	}
	var groups []*group
	byKey := map[string]*group{}
	withRules := map[string]bool{} // family + network
	for _, r := range d.ownedRules(sc2, backend) {
		withRules[r.dump.family+" "+r.network] = true
		if !before[r.dump.family+" "+r.dump.table+" "+r.rest] || (nets[r.network] && (r.endpnt == "" || eps[r.endpnt])) {
			continue
		}
		key := r.dump.family + " " + r.network
		g := byKey[key]
		if g == nil {
			g = &group{network: r.network, family: r.dump.family}
			byKey[key] = g
			groups = append(groups, g)
		}
		if !slices.Contains(g.chains, r.chain) {
			g.chains = append(g.chains, r.chain)
		}
		g.fixes = append(g.fixes, r.dump.bin+" -t "+r.dump.table+" -D "+r.rest)
	}
	for _, g := range groups {
		what := "network " + model.Short(g.network) + ", which the state does not know"
		if nets[g.network] {
			what = "endpoints of network " + model.Short(g.network) + " that the state does not know"
		}
		d.add("orphan_rule", statusProblem, fmt.Sprintf("%d %s rule%s in %s name %s", len(g.fixes), g.family, plural(len(g.fixes)), strings.Join(g.chains, ", "), what), strings.Join(g.fixes, "\n"))
	}
	return withRules
}

// checkMissingRules reports the networks of the state whose rules are
// gone, in each family the backend was read in.
func (d *doctor) checkMissingRules(st1, st2 *plugin.Dump, sc scan, backend string, withRules map[string]bool) {
	families := map[string]bool{}
	for _, td := range sc.dumps {
		if td.backend == backend {
			families[td.family] = true
		}
	}
	for _, n := range stableNetworks(st1, st2) {
		for _, fam := range []string{"iptables", "ip6tables"} {
			subnets := n.IPv4
			if fam == "ip6tables" {
				subnets = n.IPv6
			}
			if len(subnets) == 0 || !families[fam] || withRules[fam+" "+n.ID] {
				continue
			}
			d.add("missing_rules", statusProblem, fmt.Sprintf("network %s has no %s rules in mynet's chains: its isolation, egress and masquerading are gone", d.networkName(n.ID), fam), d.reconcileFix(rebuilds))
		}
	}
}
