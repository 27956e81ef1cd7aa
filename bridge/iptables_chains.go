package bridge

// This instance's chains and the hooks that send traffic into them from
// the built-in chains, placed around Docker's.

import (
	"fmt"
	"maps"
	"slices"

	"github.com/mynet/mynet/internal/model"
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

// planChains declares mynet's chains the read did not find, and hooks
// them into the built-in ones: in the operation's transaction, so that the
// chains, hooks and rules of a first network appear together.
func (f *iptablesFirewall) planChains(rs ruleset, t *tx) {
	for _, tc := range f.chains.Tables() {
		f.planChain(rs, t, tc.Table, tc.Chain)
	}
	f.planRule(rs, t, f.isolationJump())
	f.planEgress(rs, t)
	f.planLAN(rs, t)
	f.planHooks(rs, t)
}

// isolationJump sends everything the forward chain sees through the
// isolation chain's drops first, so that no accept can bypass them.
func (f *iptablesFirewall) isolationJump() rule {
	return rule{table: model.TableFilter, chain: f.chains.Forward, args: []string{"-j", f.chains.Isolation}, top: true}
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

// planHooks puts the filter hook at the end of DOCKER-USER when Docker
// runs, else first in FORWARD, and removes it from the other place, so a
// Docker started after mynet gets the hook moved at the next ensure. The
// hooks it adds go onto the transaction's undo; a move is not undone, since
// the old place is wrong.
func (f *iptablesFirewall) planHooks(rs ruleset, t *tx) {
	filter := rs.table(model.TableFilter)
	hasUser := filter.hasChain(dockerUserChain)
	from, other := "FORWARD", dockerUserChain
	if hasUser {
		from, other = dockerUserChain, "FORWARD"
	}
	hooks := f.hooks(from)
	for _, h := range hooks[1:] {
		f.planRule(rs, t, h)
	}
	fwd := hooks[0]
	if spec := canonical(fwd.args); !filter.has(fwd.chain, spec) {
		// Before DOCKER-USER's closing RETURN, after the operator's rules.
		pos := 1
		if hasUser {
			rules := filter.chains[dockerUserChain]
			pos = len(rules) + 1
			if len(rules) > 0 && rules[len(rules)-1] == "-j RETURN" {
				pos--
			}
		}
		t.line(fwd.table, fmt.Sprintf("-I %s %d %s", fwd.chain, pos, spec))
		filter.add(fwd.chain, spec)
		t.added = append(t.added, txRule{fwd.table, fwd.chain, spec})
	}
	if !hasUser {
		return
	}
	old := f.hooks(other)[0]
	if spec := canonical(old.args); filter.has(old.chain, spec) {
		t.line(old.table, "-D "+old.chain+" "+spec)
	}
}

// planEgress makes the egress chain pass new connections through Docker's
// isolation chain, when Docker has one, and then accept. Replies skip the
// check: they belong to connections that were let in, such as a container
// of a Docker network reaching a port mynet publishes. A rewrite is not
// undone: the chain goes with its creation's undo, and an existing one
// held the wrong rules.
func (f *iptablesFirewall) planEgress(rs ruleset, t *tx) {
	filter := rs.table(model.TableFilter)
	want := []string{canonical([]string{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"})}
	for _, c := range dockerIsolationChains {
		if filter.hasChain(c) {
			want = append(want, "-j "+c)
			break
		}
	}
	want = append(want, "-j ACCEPT")
	have := filter.chains[f.chains.Egress]
	if slices.Equal(have, want) {
		return
	}
	// Rewrite the chain whole: it holds a few static rules, so rebuilding
	// is simpler and safer than patching it.
	if len(have) > 0 {
		t.line(model.TableFilter, "-F "+f.chains.Egress)
	}
	filter.chains[f.chains.Egress] = nil
	for _, spec := range want {
		t.line(model.TableFilter, "-A "+f.chains.Egress+" "+spec)
		filter.add(f.chains.Egress, spec)
	}
}

// dockerIsolationStage1 is the chain where Docker, from 20.10 to 28 at
// least, names each of its bridges as an input interface: `-i BR ! -o BR
// -j DOCKER-ISOLATION-STAGE-2` for a network with egress, `-i BR ! -d
// SUBNET -j DROP` for an internal one (moby v28.5.2 iptabler/network.go,
// setINC and setupInternalNetworkRules; the same rules in 20.10).
const dockerIsolationStage1 = "DOCKER-ISOLATION-STAGE-1"

// dockerBridges are the bridges of Docker's networks, as Docker's own
// rules in the read name them, whatever their names
// (com.docker.network.bridge.name may give any): the input interfaces of
// DOCKER-ISOLATION-STAGE-1's rules, sorted, each once.
func dockerBridges(rs ruleset) []string {
	var out []string
	for _, spec := range rs.table(model.TableFilter).chains[dockerIsolationStage1] {
		fields := splitRule(spec)
		for i := 0; i+1 < len(fields); i++ {
			if fields[i] == "-i" && (i == 0 || fields[i-1] != "!") && model.ValidateIfName(fields[i+1]) == nil {
				out = append(out, fields[i+1])
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// lanTail is the LAN chain's fixed part, after the networks' returns
// (which are inserted at its top): Docker's bridges return too, anything
// else is from outside the host's bridges and accepted.
func (f *iptablesFirewall) lanTail(rs ruleset) []string {
	var tail []string
	for _, br := range dockerBridges(rs) {
		tail = append(tail, canonical([]string{"-i", br, "-j", "RETURN"}))
	}
	return append(tail, "-j ACCEPT")
}

// planLAN makes the LAN chain the networks' returns followed by lanTail,
// in that order. Checking each rule for its presence is not enough: a fixed
// rule deleted from outside would be appended after the ACCEPT, where it
// matches nothing, and Docker's bridges change as its networks come and
// go. When the fixed part is wrong it is deleted and appended again in the
// transaction, which the kernel applies at once; the networks' returns,
// which carry their network's comment, stay. A rewrite is not undone, as
// in planEgress.
func (f *iptablesFirewall) planLAN(rs ruleset, t *tx) {
	filter := rs.table(model.TableFilter)
	want := f.lanTail(rs)
	var returns, fixed []string
	inOrder := true
	for _, spec := range filter.chains[f.chains.LAN] {
		if _, _, ok := model.ParseRuleComment(spec); ok {
			inOrder = inOrder && len(fixed) == 0
			returns = append(returns, spec)
			continue
		}
		fixed = append(fixed, spec)
	}
	if inOrder && slices.Equal(fixed, want) {
		return
	}
	for _, spec := range fixed {
		t.line(model.TableFilter, "-D "+f.chains.LAN+" "+spec)
		filter.present[f.chains.LAN+" "+spec]--
	}
	filter.chains[f.chains.LAN] = returns
	for _, spec := range want {
		t.line(model.TableFilter, "-A "+f.chains.LAN+" "+spec)
		filter.add(f.chains.LAN, spec)
	}
	f.log.Debug("chain rebuilt", "family", f.family(), "chain", f.chains.LAN, "docker_bridges", len(want)-1)
}

// planRemoveChains unhooks all of mynet's chains (any rule of another
// chain that jumps into one), then flushes and deletes them.
func (f *iptablesFirewall) planRemoveChains(rs ruleset, t *tx) {
	own := map[string]bool{}
	for _, tc := range f.chains.Tables() {
		own[tc.Chain] = true
	}
	for _, table := range tableOrder {
		tr := rs.table(table)
		for _, chain := range slices.Sorted(maps.Keys(tr.chains)) {
			if own[chain] {
				continue
			}
			for _, spec := range tr.chains[chain] {
				args := splitRule(spec)
				if len(args) >= 2 && (args[len(args)-2] == "-j" || args[len(args)-2] == "-g") && own[args[len(args)-1]] {
					t.line(table, "-D "+chain+" "+spec)
				}
			}
		}
	}
	for _, tc := range f.chains.Tables() {
		if rs.table(tc.Table).hasChain(tc.Chain) {
			t.line(tc.Table, "-F "+tc.Chain)
		}
	}
	for _, tc := range f.chains.Tables() {
		if rs.table(tc.Table).hasChain(tc.Chain) {
			t.line(tc.Table, "-X "+tc.Chain)
		}
	}
	f.log.Debug("removing chains", "family", f.family(), "instance", f.instance)
}
