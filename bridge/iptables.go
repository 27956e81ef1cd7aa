package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// iptablesFirewall keeps one address family's rules with iptables-save and
// iptables-restore (or ip6tables-): each operation reads the ruleset once
// and writes what differs in one transaction (iptables_tx.go).
type iptablesFirewall struct {
	instance string
	chains   model.Chains
	ipt      IPTables
	v6       bool
	log      *slog.Logger
	// mu makes each read-compare-write one step: two operations that read
	// the same ruleset would both add what it lacks. The driver serialises
	// rule changes already; this keeps the firewall correct on its own.
	// It guards cache too.
	mu sync.Mutex
	// gen is the namespace's ruleset generation when the tables are
	// nf_tables ones (iptables-nft), nil under iptables-legacy, whose
	// changes no generation shows: then every read runs iptables-save.
	gen   *rulesetGen
	cache *iptCache // the last read, see iptables_cache.go
	reads int       // iptables-save runs, for tests and benchmarks
}

// newIPTablesFirewall keeps its reads by gen when ipt says its tables are
// nf_tables ones (nftBacked).
func newIPTablesFirewall(instance string, ipt IPTables, v6 bool, gen *rulesetGen, log *slog.Logger) *iptablesFirewall {
	f := &iptablesFirewall{instance: instance, chains: model.ChainsFor(instance), ipt: ipt, v6: v6, log: log}
	if nb, ok := ipt.(nftBacked); ok && nb.nfTables() {
		f.gen = gen
	}
	return f
}

func (f *iptablesFirewall) family() string {
	if f.v6 {
		return "ip6tables"
	}
	return "iptables"
}

// ensureNetwork adds whichever of the network's rules are missing. What it
// adds (chains, hooks, rules) goes onto undo, and only that: the caller may
// be repairing a network whose other rules are live.
func (f *iptablesFirewall) ensureNetwork(ctx context.Context, n model.Network, undo *netutil.Undo) error {
	return f.ensureRules(ctx, f.networkRules(n), "network "+model.Short(n.ID), nil, undo)
}

// ensurePorts adds the rules of an endpoint's published ports that are
// missing, and pushes what it adds onto undo.
func (f *iptablesFirewall) ensurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping, undo *netutil.Undo) error {
	return f.ensureRules(ctx, f.allPortRules(ep, ports), "ports of endpoint "+model.Short(ep.ID), nil, undo)
}

// ensureAll adds whichever rules of the networks and of the endpoints'
// ports are missing, in one transaction.
func (f *iptablesFirewall) ensureAll(ctx context.Context, networks []model.Network, endpoints []model.Endpoint, undo *netutil.Undo) (int, error) {
	var rules []rule
	for _, n := range networks {
		rules = append(rules, f.networkRules(n)...)
	}
	for _, ep := range endpoints {
		rules = append(rules, f.allPortRules(ep, ep.Ports)...)
	}
	added := 0
	err := f.ensureRules(ctx, rules, "all networks and ports", func(t *tx) { added = len(t.added) }, undo)
	return added, err
}

// ensureRules adds whichever of rules are missing, with mynet's chains
// and hooks, in one transaction, and pushes its undo. No rules: nothing,
// not even the chains.
func (f *iptablesFirewall) ensureRules(ctx context.Context, rules []rule, what string, planned func(*tx), undo *netutil.Undo) error {
	if len(rules) == 0 {
		return nil
	}
	if err := stopped(ctx, "reading the "+f.family()+" rules for "+what); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, err := f.read()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	var t tx
	f.planChains(rs, &t)
	for _, r := range rules {
		f.planRule(rs, &t, r)
	}
	if planned != nil {
		planned(&t)
	}
	return f.commit(ctx, &t, what, undo)
}

// removeNetwork deletes every rule whose comment names the network, found
// by comment rather than rebuilt from the config, so it also removes rules
// of a network whose config is lost. When no network is left, mynet's chains
// and the jumps into them go too.
func (f *iptablesFirewall) removeNetwork(id string) error {
	return f.removeWhere("network "+model.Short(id), func(nid, _ string) bool { return nid == id })
}

// removePorts deletes the rules whose comment names the endpoint: the
// driver unpublishes an endpoint's ports all at once, so these are the
// given ports' rules and any the state lost.
func (f *iptablesFirewall) removePorts(ep model.Endpoint, _ []model.PortMapping) error {
	return f.removeWhere("ports of endpoint "+model.Short(ep.ID), func(_, eid string) bool { return eid == ep.ID })
}

// removeOrphans deletes rules of networks and endpoints not in keep.
func (f *iptablesFirewall) removeOrphans(networks, endpoints map[string]bool) error {
	return f.removeWhere("orphaned rules", func(nid, eid string) bool { return !networks[nid] || (eid != "" && !endpoints[eid]) })
}

// removeWhere deletes the rules of mynet's chains that drop selects by
// their comment, and the chains and hooks when no network's rule is left,
// with one read and one transaction. A removal is not undone.
func (f *iptablesFirewall) removeWhere(what string, drop func(networkID, endpointID string) bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, err := f.read()
	if err != nil {
		return fmt.Errorf("remove %s: %w", what, err)
	}
	var t tx
	var dels []txRule
	networksLeft, chainsFound := 0, false
	for _, tc := range f.chains.Tables() {
		tr := rs.table(tc.Table)
		if !tr.hasChain(tc.Chain) {
			continue
		}
		chainsFound = true
		for _, spec := range tr.chains[tc.Chain] {
			nid, eid, ok := model.ParseRuleComment(spec)
			switch {
			case !ok:
			case drop(nid, eid):
				dels = append(dels, txRule{tc.Table, tc.Chain, spec})
			case eid == "":
				networksLeft++
			}
		}
	}
	removeChains := networksLeft == 0 && chainsFound
	if removeChains {
		// Flushing the chains deletes their rules.
		f.planRemoveChains(rs, &t)
	} else {
		planDeletes(rs, &t, dels)
	}
	if t.empty() {
		return nil
	}
	if err := f.restore(&t); err != nil {
		return fmt.Errorf("remove %s: %w", what, err)
	}
	f.log.Debug("rules removed", "family", f.family(), "of", what, "rules", len(dels), "chains_removed", removeChains)
	return nil
}

// hasRules reports whether any of this instance's chains holds a rule
// naming a network.
func (f *iptablesFirewall) hasRules() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.cached()
	if err != nil {
		return false, err
	}
	for _, tc := range f.chains.Tables() {
		t := c.rs[tc.Table]
		if t == nil {
			continue
		}
		for _, spec := range t.chains[tc.Chain] {
			if _, _, ok := model.ParseRuleComment(spec); ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// planDeletes deletes rules read from rs. A chain that loses more rules
// than it keeps is written whole instead (flushed, and the rules it keeps
// appended in their order), in the same table transaction so that no
// packet sees it half-written: with the nft backend each -D looks its
// rule up in the whole chain, and deleting 10,000 port rules one by one
// takes seconds.
func planDeletes(rs ruleset, t *tx, dels []txRule) {
	type key struct{ table, chain string }
	byChain := map[key]map[string]int{}
	var order []key
	for _, d := range dels {
		k := key{d.table, d.chain}
		if byChain[k] == nil {
			byChain[k] = map[string]int{}
			order = append(order, k)
		}
		byChain[k][d.spec]++
	}
	for _, k := range order {
		drop, have := byChain[k], rs.table(k.table).chains[k.chain]
		n := 0
		for _, c := range drop {
			n += c
		}
		if n <= len(have)-n {
			for _, d := range dels {
				if d.table == k.table && d.chain == k.chain {
					t.line(k.table, "-D "+k.chain+" "+d.spec)
				}
			}
			continue
		}
		t.line(k.table, "-F "+k.chain)
		for _, spec := range have {
			if drop[spec] > 0 {
				drop[spec]--
				continue
			}
			t.line(k.table, "-A "+k.chain+" "+spec)
		}
	}
}
