package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/coreos/go-iptables/iptables"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// IPTables is the part of *iptables.IPTables mynet uses; tests run the real
// binary in a throwaway namespace, wrapped only to inject failures.
type IPTables interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	DeleteById(table, chain string, id int) error
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
}

// newIPTables uses the iptables (or ip6tables) binary first on PATH, as
// dockerd does, so mynet's rules land in the same backend (nft or legacy) as
// Docker's, and passes --wait so concurrent writers queue on the xtables
// lock instead of failing.
func newIPTables(v6 bool) (IPTables, error) {
	proto, bin := iptables.ProtocolIPv4, "iptables"
	if v6 {
		proto, bin = iptables.ProtocolIPv6, "ip6tables"
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(30))
	if err != nil {
		return nil, fmt.Errorf("find %s: %w; install the iptables package", bin, err)
	}
	return ipt, nil
}

// iptablesFirewall keeps one address family's rules with the iptables
// (or ip6tables) binary.
type iptablesFirewall struct {
	instance string
	chains   model.Chains
	ipt      IPTables
	v6       bool
	log      *slog.Logger
}

func newIPTablesFirewall(instance string, ipt IPTables, v6 bool, log *slog.Logger) *iptablesFirewall {
	return &iptablesFirewall{instance: instance, chains: model.ChainsFor(instance), ipt: ipt, v6: v6, log: log}
}

func (f *iptablesFirewall) family() string {
	if f.v6 {
		return "ip6tables"
	}
	return "iptables"
}

// ensureNetwork adds whichever of the network's rules are missing. Each
// chain, hook and rule it adds goes onto undo, and only those: the caller
// may be repairing a network whose other rules are live.
func (f *iptablesFirewall) ensureNetwork(ctx context.Context, n model.Network, undo *netutil.Undo) error {
	return f.ensureRules(ctx, f.networkRules(n), "network "+model.Short(n.ID), undo)
}

// ensurePorts adds the rules of an endpoint's published ports that are
// missing, and pushes what it adds onto undo.
func (f *iptablesFirewall) ensurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping, undo *netutil.Undo) error {
	return f.ensureRules(ctx, f.allPortRules(ep, ports), "ports of endpoint "+model.Short(ep.ID), undo)
}

// ensureRules adds whichever of rules are missing, with mynet's chains
// and hooks, and pushes what it adds onto undo. No rules: nothing, not
// even the chains.
func (f *iptablesFirewall) ensureRules(ctx context.Context, rules []rule, what string, undo *netutil.Undo) error {
	if len(rules) == 0 {
		return nil
	}
	if err := stopped(ctx, f.family()+" chains for "+what); err != nil {
		return err
	}
	if err := f.ensureChains(undo); err != nil {
		return err
	}
	return f.ensureAll(ctx, rules, what, undo)
}

// ensureAll checks ctx before each rule: the iptables wrapper cannot cancel
// a running iptables, but no new one starts once ctx is done. What it adds
// goes onto undo.
func (f *iptablesFirewall) ensureAll(ctx context.Context, rules []rule, what string, undo *netutil.Undo) error {
	for _, r := range rules {
		if err := stopped(ctx, f.family()+" rule "+r.String()+" of "+what); err != nil {
			return err
		}
		if err := f.ensure(r, undo); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

// removeNetwork deletes every rule whose comment names the network, found
// by comment rather than rebuilt from the config, so it also removes rules
// of a network whose config is lost. When no network is left, mynet's chains
// and the jumps into them go too.
func (f *iptablesFirewall) removeNetwork(id string) error {
	return f.removeWhere(func(nid, _ string) bool { return nid == id })
}

// removePorts deletes the rules of the given ports of one endpoint, one
// iptables call per rule; leftovers of ports the state lost are orphans
// that removeOrphans finds by comment.
func (f *iptablesFirewall) removePorts(ep model.Endpoint, ports []model.PortMapping) error {
	var errs []error
	for _, r := range f.allPortRules(ep, ports) {
		err := f.ipt.Delete(r.table, r.chain, r.args...)
		var ierr *iptables.Error
		if errors.As(err, &ierr) && ierr.IsNotExist() {
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete %s rule %s: %w", f.family(), r, err))
			continue
		}
		f.log.Debug("rule removed", "family", f.family(), "rule", r.String())
	}
	return errors.Join(errs...)
}

// removeOrphans deletes rules of networks and endpoints not in keep.
func (f *iptablesFirewall) removeOrphans(networks, endpoints map[string]bool) error {
	return f.removeWhere(func(nid, eid string) bool { return !networks[nid] || (eid != "" && !endpoints[eid]) })
}

func (f *iptablesFirewall) removeWhere(drop func(networkID, endpointID string) bool) error {
	networksLeft, chainsFound := 0, false
	for _, tc := range f.chains.Tables() {
		exists, err := f.ipt.ChainExists(tc.Table, tc.Chain)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", tc.Chain, err)
		}
		if !exists {
			continue
		}
		chainsFound = true
		lines, err := f.ipt.List(tc.Table, tc.Chain)
		if err != nil {
			return fmt.Errorf("list chain %s: %w", tc.Chain, err)
		}
		// lines[0] is the chain's "-N" line, so lines[i] is rule number i.
		// Delete from the bottom so the numbers above stay valid.
		for i := len(lines) - 1; i >= 1; i-- {
			nid, eid, ok := model.ParseRuleComment(lines[i])
			if !ok {
				continue
			}
			if !drop(nid, eid) {
				if eid == "" {
					networksLeft++
				}
				continue
			}
			if err := f.ipt.DeleteById(tc.Table, tc.Chain, i); err != nil {
				return fmt.Errorf("delete rule %d of %s (%s): %w", i, tc.Chain, lines[i], err)
			}
			f.log.Debug("rule removed", "family", f.family(), "rule", lines[i])
		}
	}
	if networksLeft == 0 && chainsFound {
		return f.removeChains()
	}
	return nil
}

// hasRules reports whether any of this instance's chains holds a rule
// naming a network.
func (f *iptablesFirewall) hasRules() (bool, error) {
	for _, tc := range f.chains.Tables() {
		exists, err := f.ipt.ChainExists(tc.Table, tc.Chain)
		if err != nil {
			return false, fmt.Errorf("check chain %s: %w", tc.Chain, err)
		}
		if !exists {
			continue
		}
		lines, err := f.ipt.List(tc.Table, tc.Chain)
		if err != nil {
			return false, fmt.Errorf("list chain %s: %w", tc.Chain, err)
		}
		for _, l := range lines {
			if _, _, ok := model.ParseRuleComment(l); ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// ensure adds r if it is missing, and then pushes its deletion onto undo.
func (f *iptablesFirewall) ensure(r rule, undo *netutil.Undo) error {
	ok, err := f.ipt.Exists(r.table, r.chain, r.args...)
	if err != nil {
		return fmt.Errorf("check rule %s: %w", r, err)
	}
	if ok {
		return nil
	}
	if r.top {
		err = f.ipt.Insert(r.table, r.chain, 1, r.args...)
	} else {
		err = f.ipt.Append(r.table, r.chain, r.args...)
	}
	if err != nil {
		return fmt.Errorf("add %s rule %s: %w", f.family(), r, err)
	}
	f.log.Debug("rule added", "family", f.family(), "rule", r.String())
	f.pushDelete(undo, r)
	return nil
}

// pushDelete pushes the deletion of a rule this call added onto undo.
func (f *iptablesFirewall) pushDelete(undo *netutil.Undo, r rule) {
	undo.Push("delete "+f.family()+" rule "+r.String(), func() error {
		if err := f.ipt.DeleteIfExists(r.table, r.chain, r.args...); err != nil {
			return fmt.Errorf("delete %s rule %s: %w", f.family(), r, err)
		}
		return nil
	})
}
