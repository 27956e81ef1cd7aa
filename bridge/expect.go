package bridge

// What the firewall should hold, for `mynet doctor` to compare with what
// iptables lists: the rules are defined once, here, for both.

import (
	"log/slog"

	"github.com/mynet/mynet/internal/model"
)

// RuleSpec is one iptables rule as mynet adds it: Args are the arguments
// after "-A CHAIN", unquoted.
type RuleSpec struct {
	Table, Chain string
	Args         []string
}

func specs(rules []rule) []RuleSpec {
	out := make([]RuleSpec, 0, len(rules))
	for _, r := range rules {
		out = append(out, RuleSpec{Table: r.table, Chain: r.chain, Args: r.args})
	}
	return out
}

// expectFirewall has no iptables: networkRules, hooks and isolationJump
// must stay pure functions of the instance, the family and the
// network, which the doctor's tests (healthy setups built by EnsureNetwork
// must show no missing rule) hold them to.
func expectFirewall(instance string, v6 bool) *iptablesFirewall {
	return &iptablesFirewall{instance: instance, chains: model.ChainsFor(instance), v6: v6, log: slog.New(slog.DiscardHandler)}
}

// NetworkRules are the rules EnsureNetwork keeps for n in one family;
// none when n has no subnet of the family.
func NetworkRules(instance string, v6 bool, n model.Network) []RuleSpec {
	return specs(expectFirewall(instance, v6).networkRules(n))
}

// ChainRules are the rules of a family that name no network, present while
// any network has rules in it: the jumps from the built-in chains into the
// instance's (the filter one from forwardFrom: DOCKER-USER when Docker
// made it, else FORWARD), the forward chain's jump into the isolation
// chain, and the LAN chain's closing ACCEPT. Left out are the rules that
// depend on Docker's: the egress chain's, and the LAN chain's returns for
// Docker's bridges (lanTail).
func ChainRules(instance string, v6 bool, forwardFrom string) []RuleSpec {
	f := expectFirewall(instance, v6)
	lanAccept := rule{table: model.TableFilter, chain: f.chains.LAN, args: []string{"-j", "ACCEPT"}}
	return specs(append(f.hooks(forwardFrom), f.isolationJump(), lanAccept))
}

// DockerUserChain is the chain that holds mynet's filter hook when Docker
// runs (see ensureHooks).
const DockerUserChain = dockerUserChain
