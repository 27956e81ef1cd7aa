package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"

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

// Docker's chains that decide what may enter its own bridges. Egress from a
// mynet bridge passes through one of them so that a mynet container cannot
// open connections into a Docker bridge network. 20.10-27.x keep the drops in
// DOCKER-ISOLATION-STAGE-2; 28+ in DOCKER-BRIDGE (via DOCKER).
var dockerIsolationChains = []string{"DOCKER-ISOLATION-STAGE-2", "DOCKER-BRIDGE"}

// dockerUserChain is where mynet hooks its filter rules when Docker runs.
// Docker keeps the jump to DOCKER-USER first in FORWARD, but inserts each
// new network's accepts at the top of FORWARD too, above any jump of ours;
// at the end of DOCKER-USER mynet's verdicts come after the operator's own
// DOCKER-USER rules and before all of Docker's.
const dockerUserChain = "DOCKER-USER"

// rule is one iptables rule, defined once and used for both adding and
// deleting. top rules are inserted at the head of their chain, the rest
// appended.
type rule struct {
	table, chain string
	args         []string
	top          bool
}

func (r rule) String() string { return r.table + " " + r.chain + " " + strings.Join(r.args, " ") }

// firewall manages one address family's rules.
type firewall struct {
	instance string
	chains   model.Chains
	ipt      IPTables
	v6       bool
	log      *slog.Logger
}

func newFirewall(instance string, ipt IPTables, v6 bool, log *slog.Logger) *firewall {
	return &firewall{instance: instance, chains: model.ChainsFor(instance), ipt: ipt, v6: v6, log: log}
}

func (f *firewall) family() string {
	if f.v6 {
		return "ip6tables"
	}
	return "iptables"
}

// networkRules is the whole per-network policy of one family; it is empty
// when the network has no subnet of the family. Drops live in the
// isolation chain, which is evaluated before any accept, so the order of
// rules only matters for the port accepts, which are inserted at its top.
//
//	isolation: new connections into the bridge from any other interface
//	           are dropped (other mynet networks, Docker's bridges, the
//	           outside); so is traffic between its containers without ICC,
//	           and all egress of an internal network;
//	forward:   replies into the bridge, traffic inside it (with ICC) and
//	           egress (checked against Docker's bridges first) are accepted;
//	nat:       egress is masqueraded to the host's address, and connections
//	           from the host's loopback to a published port get the
//	           bridge's address, so replies find their way back.
func (f *firewall) networkRules(n model.Network) []rule {
	subnets := n.Subnets(f.v6)
	if len(subnets) == 0 {
		return nil
	}
	c, br := comment(model.RuleComment(n.ID, "")), n.Bridge
	notReply := []string{"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED"}
	rules := []rule{
		{table: model.TableFilter, chain: f.chains.Isolation, args: concat([]string{"!", "-i", br, "-o", br}, notReply, c, []string{"-j", "DROP"})},
		{table: model.TableFilter, chain: f.chains.Forward, args: concat([]string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"}, c, []string{"-j", "ACCEPT"})},
	}
	if n.ICC {
		rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Forward, args: concat([]string{"-i", br, "-o", br}, c, []string{"-j", "ACCEPT"})})
	} else {
		rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Isolation, args: concat([]string{"-i", br, "-o", br}, notReply, c, []string{"-j", "DROP"})})
	}
	if n.Internal {
		return append(rules, rule{table: model.TableFilter, chain: f.chains.Isolation, args: concat([]string{"-i", br, "!", "-o", br}, c, []string{"-j", "DROP"})})
	}
	rules = append(rules, rule{table: model.TableFilter, chain: f.chains.Forward, args: concat([]string{"-i", br, "!", "-o", br}, c, []string{"-j", f.chains.Egress})})
	if n.Masquerade {
		for _, s := range subnets {
			rules = append(rules, rule{table: model.TableNAT, chain: f.chains.Postrouting, args: concat([]string{"-s", s.Pool.String(), "!", "-o", br}, c, []string{"-j", "MASQUERADE"})})
		}
	}
	if !f.v6 {
		rules = append(rules, rule{table: model.TableNAT, chain: f.chains.Postrouting, args: concat([]string{"-s", "127.0.0.0/8", "-o", br}, c, []string{"-j", "MASQUERADE"})})
	}
	return rules
}

// portRules publishes one mapping: DNAT from the host's addresses (the
// jump into the DNAT chain matches local destinations only) and an accept
// for the translated connections only, ahead of the isolation drops, so a
// published port does not open the container to direct connections.
func (f *firewall) portRules(ep model.Endpoint, m model.PortMapping) []rule {
	if m.ContainerIP.Is6() != f.v6 || (m.HostIP.IsValid() && m.HostIP.Is6() != f.v6) {
		return nil
	}
	c := comment(model.RuleComment(ep.NetworkID, ep.ID))
	proto := []string{"-p", m.Proto, "-m", m.Proto}
	hostPorts, ctrPorts := portSpec(m.HostPort, m.HostPortEnd, ":"), portSpec(m.Port, m.Port+(m.HostPortEnd-m.HostPort), "-")
	var dst []string
	if m.HostIP.IsValid() {
		dst = []string{"-d", netip.PrefixFrom(m.HostIP, m.HostIP.BitLen()).String()}
	}
	to := m.ContainerIP.String() + ":" + ctrPorts
	if f.v6 {
		to = "[" + m.ContainerIP.String() + "]:" + ctrPorts
	}
	ctr := netip.PrefixFrom(m.ContainerIP, m.ContainerIP.BitLen()).String()
	return []rule{
		{table: model.TableNAT, chain: f.chains.DNAT, args: concat(dst, proto, []string{"--dport", hostPorts}, c, []string{"-j", "DNAT", "--to-destination", to})},
		{table: model.TableFilter, chain: f.chains.Isolation, top: true, args: concat([]string{"-d", ctr, "-o", ep.Bridge}, proto, []string{"--dport", strings.ReplaceAll(ctrPorts, "-", ":"), "-m", "conntrack", "--ctstate", "DNAT"}, c, []string{"-j", "ACCEPT"})},
	}
}

func portSpec(first, last uint16, sep string) string {
	if last <= first {
		return strconv.Itoa(int(first))
	}
	return strconv.Itoa(int(first)) + sep + strconv.Itoa(int(last))
}

// ensureNetwork adds whichever of the network's rules are missing. Each
// chain, hook and rule it adds goes onto undo, and only those: the caller
// may be repairing a network whose other rules are live.
func (f *firewall) ensureNetwork(ctx context.Context, n model.Network, undo *netutil.Undo) error {
	rules := f.networkRules(n)
	if len(rules) == 0 {
		return nil
	}
	what := "network " + model.Short(n.ID)
	if err := stopped(ctx, f.family()+" chains for "+what); err != nil {
		return err
	}
	if err := f.ensureChains(undo); err != nil {
		return err
	}
	return f.ensureAll(ctx, rules, what, undo)
}

// ensurePorts adds the rules of an endpoint's published ports that are
// missing, and pushes what it adds onto undo.
func (f *firewall) ensurePorts(ctx context.Context, n model.Network, ep model.Endpoint, ports []model.PortMapping, undo *netutil.Undo) error {
	rules := f.allPortRules(ep, ports)
	if len(rules) == 0 {
		return nil
	}
	what := "ports of endpoint " + model.Short(ep.ID)
	if err := stopped(ctx, f.family()+" chains for "+what); err != nil {
		return err
	}
	if err := f.ensureChains(undo); err != nil {
		return err
	}
	return f.ensureAll(ctx, rules, what, undo)
}

func (f *firewall) allPortRules(ep model.Endpoint, ports []model.PortMapping) []rule {
	var rules []rule
	for _, m := range ports {
		rules = append(rules, f.portRules(ep, m)...)
	}
	return rules
}

// ensureAll checks ctx before each rule: the iptables wrapper cannot cancel
// a running iptables, but no new one starts once ctx is done. What it adds
// goes onto undo.
func (f *firewall) ensureAll(ctx context.Context, rules []rule, what string, undo *netutil.Undo) error {
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
func (f *firewall) removeNetwork(id string) error {
	return f.removeWhere(func(nid, _ string) bool { return nid == id })
}

// removePorts deletes the rules of the given ports of one endpoint, one
// iptables call per rule; leftovers of ports the state lost are orphans
// that removeOrphans finds by comment.
func (f *firewall) removePorts(ep model.Endpoint, ports []model.PortMapping) error {
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
func (f *firewall) removeOrphans(networks, endpoints map[string]bool) error {
	return f.removeWhere(func(nid, eid string) bool { return !networks[nid] || (eid != "" && !endpoints[eid]) })
}

func (f *firewall) removeWhere(drop func(networkID, endpointID string) bool) error {
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

// ensureChains creates mynet's chains and hooks them into the built-in
// ones, pushing what it creates onto undo.
func (f *firewall) ensureChains(undo *netutil.Undo) error {
	for _, tc := range f.chains.Tables() {
		if err := f.ensureChain(tc.Table, tc.Chain, undo); err != nil {
			return err
		}
	}
	if err := f.ensure(rule{table: model.TableFilter, chain: f.chains.Forward, args: []string{"-j", f.chains.Isolation}, top: true}, undo); err != nil {
		return err
	}
	if err := f.ensureEgress(); err != nil {
		return err
	}
	return f.ensureHooks(undo)
}

// hooks are the jumps from built-in chains (and Docker's DOCKER-USER) into
// mynet's. The DNAT chain sees only packets to the host's own addresses;
// for IPv6, ::1 is left out: unlike 127.0.0.1 with route_localnet, it
// cannot be routed to a bridge.
func (f *firewall) hooks(forwardFrom string) []rule {
	c := []string{"-m", "comment", "--comment", model.HookComment(f.instance)}
	local := []string{"-m", "addrtype", "--dst-type", "LOCAL"}
	output := local
	if f.v6 {
		output = concat([]string{"!", "-d", "::1/128"}, local)
	}
	return []rule{
		{table: model.TableFilter, chain: forwardFrom, args: concat(c, []string{"-j", f.chains.Forward})},
		{table: model.TableNAT, chain: "POSTROUTING", args: concat(c, []string{"-j", f.chains.Postrouting}), top: true},
		{table: model.TableNAT, chain: "PREROUTING", args: concat(local, c, []string{"-j", f.chains.DNAT}), top: true},
		{table: model.TableNAT, chain: "OUTPUT", args: concat(output, c, []string{"-j", f.chains.DNAT}), top: true},
	}
}

// ensureHooks puts the filter hook at the end of DOCKER-USER when Docker
// runs, else first in FORWARD, and removes it from the other place, so a
// Docker started after mynet gets the hook moved at the next ensure. The
// hooks it adds go onto undo; a move is not undone, since the old place is
// wrong.
func (f *firewall) ensureHooks(undo *netutil.Undo) error {
	hasUser, err := f.ipt.ChainExists(model.TableFilter, dockerUserChain)
	if err != nil {
		return fmt.Errorf("check chain %s: %w", dockerUserChain, err)
	}
	from, other := "FORWARD", dockerUserChain
	if hasUser {
		from, other = dockerUserChain, "FORWARD"
	}
	hooks := f.hooks(from)
	for _, h := range hooks[1:] {
		if err := f.ensure(h, undo); err != nil {
			return err
		}
	}
	fwd := hooks[0]
	ok, err := f.ipt.Exists(fwd.table, fwd.chain, fwd.args...)
	if err != nil {
		return fmt.Errorf("check rule %s: %w", fwd, err)
	}
	if !ok {
		if err := f.insertForwardHook(fwd, hasUser); err != nil {
			return err
		}
		f.pushDelete(undo, fwd)
	}
	if !hasUser {
		return nil
	}
	old := f.hooks(other)[0]
	if err := f.ipt.DeleteIfExists(old.table, old.chain, old.args...); err != nil {
		return fmt.Errorf("delete old hook %s: %w", old, err)
	}
	return nil
}

func (f *firewall) insertForwardHook(fwd rule, hasUser bool) error {
	pos := 1
	if hasUser {
		// Before DOCKER-USER's closing RETURN, after the operator's rules.
		lines, err := f.ipt.List(model.TableFilter, dockerUserChain)
		if err != nil {
			return fmt.Errorf("list %s: %w", dockerUserChain, err)
		}
		// lines[0] is "-N", so the chain has len(lines)-1 rules.
		pos = len(lines)
		if last := lines[len(lines)-1]; last == "-A "+dockerUserChain+" -j RETURN" {
			pos--
		}
	}
	if err := f.ipt.Insert(fwd.table, fwd.chain, pos, fwd.args...); err != nil {
		return fmt.Errorf("add rule %s: %w", fwd, err)
	}
	return nil
}

// ensureEgress makes the egress chain pass new connections through Docker's
// isolation chain, when Docker has one, and then accept. Replies skip the
// check: they belong to connections that were let in, such as a container
// of a Docker network reaching a port mynet publishes. A rewrite is not
// undone: the chain goes with its creation's undo, and an existing one
// held the wrong rules.
func (f *firewall) ensureEgress() error {
	want := []string{"-N " + f.chains.Egress, "-A " + f.chains.Egress + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}
	for _, c := range dockerIsolationChains {
		ok, err := f.ipt.ChainExists(model.TableFilter, c)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", c, err)
		}
		if ok {
			want = append(want, "-A "+f.chains.Egress+" -j "+c)
			break
		}
	}
	want = append(want, "-A "+f.chains.Egress+" -j ACCEPT")
	have, err := f.ipt.List(model.TableFilter, f.chains.Egress)
	if err != nil {
		return fmt.Errorf("list chain %s: %w", f.chains.Egress, err)
	}
	if strings.Join(have, "\n") == strings.Join(want, "\n") {
		return nil
	}
	// Rewrite the chain: it holds two static rules, so rebuilding is
	// simpler and safer than patching it.
	for i := len(have) - 1; i >= 1; i-- {
		if err := f.ipt.DeleteById(model.TableFilter, f.chains.Egress, i); err != nil {
			return fmt.Errorf("reset chain %s: %w", f.chains.Egress, err)
		}
	}
	for _, l := range want[1:] {
		args := strings.Fields(strings.TrimPrefix(l, "-A "+f.chains.Egress+" "))
		if err := f.ipt.Append(model.TableFilter, f.chains.Egress, args...); err != nil {
			return fmt.Errorf("fill chain %s: %w", f.chains.Egress, err)
		}
	}
	return nil
}

// removeChains unhooks and deletes all of mynet's chains.
func (f *firewall) removeChains() error {
	var errs []error
	hooks := append(f.hooks("FORWARD"), f.hooks(dockerUserChain)[0])
	for _, h := range hooks {
		// iptables cannot even look for a jump to a chain that is gone, and
		// such a jump cannot exist; nor can a jump from a missing chain.
		target := h.args[len(h.args)-1]
		if ok, err := f.ipt.ChainExists(h.table, target); err != nil || !ok {
			continue
		}
		if ok, err := f.ipt.ChainExists(h.table, h.chain); err != nil || !ok {
			continue
		}
		if err := f.ipt.DeleteIfExists(h.table, h.chain, h.args...); err != nil {
			errs = append(errs, fmt.Errorf("delete hook %s: %w", h, err))
		}
	}
	// In tables() order: a chain that jumps to another is cleared first.
	for _, tc := range f.chains.Tables() {
		if err := f.ipt.ClearAndDeleteChain(tc.Table, tc.Chain); err != nil {
			errs = append(errs, fmt.Errorf("delete chain %s: %w", tc.Chain, err))
		}
	}
	if len(errs) == 0 {
		f.log.Debug("chains removed", "family", f.family(), "instance", f.instance)
	}
	return errors.Join(errs...)
}

// ensureChain creates the chain if it is missing and then pushes its
// deletion, with whatever rules this call fills it with, onto undo.
func (f *firewall) ensureChain(table, chain string, undo *netutil.Undo) error {
	ok, err := f.ipt.ChainExists(table, chain)
	if err != nil {
		return fmt.Errorf("check chain %s: %w", chain, err)
	}
	if ok {
		return nil
	}
	if err := f.ipt.NewChain(table, chain); err != nil {
		return fmt.Errorf("create chain %s: %w", chain, err)
	}
	f.log.Debug("chain created", "family", f.family(), "table", table, "chain", chain)
	undo.Push("delete "+f.family()+" chain "+chain, func() error {
		if err := f.ipt.ClearAndDeleteChain(table, chain); err != nil {
			return fmt.Errorf("delete %s chain %s: %w", f.family(), chain, err)
		}
		return nil
	})
	return nil
}

// ensure adds r if it is missing, and then pushes its deletion onto undo.
func (f *firewall) ensure(r rule, undo *netutil.Undo) error {
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
func (f *firewall) pushDelete(undo *netutil.Undo, r rule) {
	undo.Push("delete "+f.family()+" rule "+r.String(), func() error {
		if err := f.ipt.DeleteIfExists(r.table, r.chain, r.args...); err != nil {
			return fmt.Errorf("delete %s rule %s: %w", f.family(), r, err)
		}
		return nil
	})
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// comment is the match that carries a rule's comment.
func comment(text string) []string { return []string{"-m", "comment", "--comment", text} }
