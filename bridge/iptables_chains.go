package bridge

// This instance's chains and the hooks that send traffic into them from
// the built-in chains, placed around Docker's.

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

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

// ensureChains creates mynet's chains and hooks them into the built-in
// ones, pushing what it creates onto undo.
func (f *iptablesFirewall) ensureChains(undo *netutil.Undo) error {
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
	if err := f.ensureLAN(); err != nil {
		return err
	}
	return f.ensureHooks(undo)
}

// hooks are the jumps from built-in chains (and Docker's DOCKER-USER) into
// mynet's. The DNAT chain sees only packets to the host's own addresses;
// for IPv6, ::1 is left out: unlike 127.0.0.1 with route_localnet, it
// cannot be routed to a bridge.
func (f *iptablesFirewall) hooks(forwardFrom string) []rule {
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
		{table: model.TableMangle, chain: "PREROUTING", args: concat(c, []string{"-j", f.chains.Direct}), top: true},
	}
}

// ensureHooks puts the filter hook at the end of DOCKER-USER when Docker
// runs, else first in FORWARD, and removes it from the other place, so a
// Docker started after mynet gets the hook moved at the next ensure. The
// hooks it adds go onto undo; a move is not undone, since the old place is
// wrong.
func (f *iptablesFirewall) ensureHooks(undo *netutil.Undo) error {
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

func (f *iptablesFirewall) insertForwardHook(fwd rule, hasUser bool) error {
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
func (f *iptablesFirewall) ensureEgress() error {
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

// dockerIsolationStage1 is the chain where Docker, from 20.10 to 28 at
// least, names each of its bridges as an input interface: `-i BR ! -o BR
// -j DOCKER-ISOLATION-STAGE-2` for a network with egress, `-i BR ! -d
// SUBNET -j DROP` for an internal one (moby v28.5.2 iptabler/network.go,
// setINC and setupInternalNetworkRules; the same rules in 20.10).
const dockerIsolationStage1 = "DOCKER-ISOLATION-STAGE-1"

// dockerBridges are the bridges of Docker's networks, as Docker's own
// rules name them, whatever their names (com.docker.network.bridge.name
// may give any): the input interfaces of DOCKER-ISOLATION-STAGE-1's rules,
// sorted, each once. None when Docker has no such chain.
func (f *iptablesFirewall) dockerBridges() ([]string, error) {
	ok, err := f.ipt.ChainExists(model.TableFilter, dockerIsolationStage1)
	if err != nil || !ok {
		return nil, err
	}
	lines, err := f.ipt.List(model.TableFilter, dockerIsolationStage1)
	if err != nil {
		return nil, fmt.Errorf("list chain %s: %w", dockerIsolationStage1, err)
	}
	var out []string
	for _, l := range lines {
		fields := strings.Fields(l)
		for i := 1; i+1 < len(fields); i++ {
			if fields[i] == "-i" && fields[i-1] != "!" && model.ValidateIfName(fields[i+1]) == nil {
				out = append(out, fields[i+1])
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// lanTail is the LAN chain's fixed part, after the networks' returns
// (which are inserted at its top): Docker's bridges return too, anything
// else is from outside the host's bridges and accepted.
func (f *iptablesFirewall) lanTail() ([]string, error) {
	bridges, err := f.dockerBridges()
	if err != nil {
		return nil, err
	}
	var tail []string
	for _, br := range bridges {
		tail = append(tail, "-A "+f.chains.LAN+" -i "+br+" -j RETURN")
	}
	return append(tail, "-A "+f.chains.LAN+" -j ACCEPT"), nil
}

// ensureLAN makes the LAN chain the networks' returns followed by lanTail,
// in that order. Checking each rule for its presence is not enough: a fixed
// rule deleted from outside would be appended after the ACCEPT, where it
// matches nothing, and Docker's bridges change as its networks come and
// go. When the order is wrong the fixed rules are deleted from the bottom
// up and appended again; the ACCEPT goes first and comes back last, so
// meanwhile the chain lets nothing more in than it did (an unknown source
// falls through to the isolation drop). The networks' returns, which
// carry their network's comment, stay. A rewrite is not undone, as in
// ensureEgress.
func (f *iptablesFirewall) ensureLAN() error {
	want, err := f.lanTail()
	if err != nil {
		return err
	}
	have, err := f.ipt.List(model.TableFilter, f.chains.LAN)
	if err != nil {
		return fmt.Errorf("list chain %s: %w", f.chains.LAN, err)
	}
	var fixed []int // rule numbers of the fixed rules
	inOrder := true
	for i := 1; i < len(have); i++ {
		if _, _, ok := model.ParseRuleComment(have[i]); ok {
			inOrder = inOrder && len(fixed) == 0
			continue
		}
		fixed = append(fixed, i)
	}
	if inOrder && len(fixed) == len(want) {
		for j, i := range fixed {
			inOrder = inOrder && have[i] == want[j]
		}
		if inOrder {
			return nil
		}
	}
	for _, i := range slices.Backward(fixed) {
		if err := f.ipt.DeleteById(model.TableFilter, f.chains.LAN, i); err != nil {
			return fmt.Errorf("reset chain %s: %w", f.chains.LAN, err)
		}
	}
	for _, l := range want {
		args := strings.Fields(strings.TrimPrefix(l, "-A "+f.chains.LAN+" "))
		if err := f.ipt.Append(model.TableFilter, f.chains.LAN, args...); err != nil {
			return fmt.Errorf("fill chain %s: %w", f.chains.LAN, err)
		}
	}
	f.log.Debug("chain rebuilt", "family", f.family(), "chain", f.chains.LAN, "docker_bridges", len(want)-1)
	return nil
}

// removeChains unhooks and deletes all of mynet's chains.
func (f *iptablesFirewall) removeChains() error {
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
func (f *iptablesFirewall) ensureChain(table, chain string, undo *netutil.Undo) error {
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
