package bridge

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/mynet/mynet/netutil"
)

// IPTables is the part of *iptables.IPTables mynet uses; tests substitute
// nothing here, they run the real binary in a throwaway namespace.
type IPTables interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
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

const (
	tableFilter = "filter"
	tableNAT    = "nat"
)

// Docker's chains that decide what may enter its own bridges. Egress from a
// mynet bridge passes through one of them so that a mynet container cannot
// open connections into a Docker bridge network. 20.10-27.x keep the drops in
// DOCKER-ISOLATION-STAGE-2; 28+ in DOCKER-BRIDGE (via DOCKER).
var dockerIsolationChains = []string{"DOCKER-ISOLATION-STAGE-2", "DOCKER-BRIDGE"}

// chainSet names one instance's chains. The default instance gets plain
// MYNET-* names; another instance (a test, a second plugin) gets a short hash
// of its name, within iptables' 28-character limit, so neither ever touches
// the other's rules.
type chainSet struct {
	forward, isolation, egress, postrouting string
}

func chainsFor(instance string) chainSet {
	p := "MYNET"
	if instance != "mynet" {
		sum := sha256.Sum256([]byte(instance))
		p = "MYNET-" + hex.EncodeToString(sum[:3])
	}
	return chainSet{
		forward:     p + "-FORWARD",
		isolation:   p + "-ISOLATION",
		egress:      p + "-EGRESS",
		postrouting: p + "-POSTROUTING",
	}
}

func (c chainSet) all() []string { return []string{c.forward, c.isolation, c.egress, c.postrouting} }

// rule is one iptables rule, defined once and used for both adding and
// deleting.
type rule struct {
	table, chain string
	args         []string
}

func (r rule) String() string { return r.table + " " + r.chain + " " + strings.Join(r.args, " ") }

type firewall struct {
	instance string
	chains   chainSet
	ipt      IPTables
	log      *slog.Logger
}

func newFirewall(instance string, ipt IPTables, log *slog.Logger) *firewall {
	return &firewall{instance: instance, chains: chainsFor(instance), ipt: ipt, log: log}
}

func networkComment(id string) []string {
	return []string{"-m", "comment", "--comment", "mynet net=" + id}
}

var networkCommentRE = regexp.MustCompile(`--comment "?mynet net=([0-9a-f]+)`)

// networkRules is the whole per-network policy. Rules in different chains
// are order-independent by construction: isolation drops live in their own
// chain, evaluated before any accept, so adding or repairing one rule never
// needs the others moved.
//
//	isolation: new connections into the bridge from any other interface
//	           (other mynet networks, Docker's bridges, the outside) are dropped;
//	forward:   replies into the bridge, traffic inside the bridge, and
//	           egress (checked against Docker's bridges first) are accepted;
//	nat:       egress is masqueraded to the host's address.
func (f *firewall) networkRules(n Network) []rule {
	c, br := networkComment(n.ID), n.Bridge
	rules := []rule{
		{tableFilter, f.chains.isolation, concat([]string{"!", "-i", br, "-o", br, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED"}, c, []string{"-j", "DROP"})},
		{tableFilter, f.chains.forward, concat([]string{"-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"}, c, []string{"-j", "ACCEPT"})},
		{tableFilter, f.chains.forward, concat([]string{"-i", br, "-o", br}, c, []string{"-j", "ACCEPT"})},
		{tableFilter, f.chains.forward, concat([]string{"-i", br, "!", "-o", br}, c, []string{"-j", f.chains.egress})},
	}
	for _, s := range n.IPv4 {
		rules = append(rules, rule{tableNAT, f.chains.postrouting, concat([]string{"-s", s.Pool.String(), "!", "-o", br}, c, []string{"-j", "MASQUERADE"})})
	}
	return rules
}

// ensureNetwork adds whichever of the network's rules are missing.
func (f *firewall) ensureNetwork(n Network) error {
	if err := f.ensureChains(); err != nil {
		return err
	}
	for _, r := range f.networkRules(n) {
		if err := f.ensure(r, -1); err != nil {
			return fmt.Errorf("network %s: %w", netutil.Short(n.ID), err)
		}
	}
	return nil
}

// removeNetwork deletes every rule whose comment names the network, found
// by comment rather than rebuilt from the config, so it also removes rules
// of a network whose config is lost. When no network is left, mynet's chains
// and the jumps into them go too.
func (f *firewall) removeNetwork(id string) error {
	return f.removeRulesWhere(func(rid string) bool { return rid == id })
}

// removeOrphans deletes rules of networks not in keep.
func (f *firewall) removeOrphans(keep map[string]bool) error {
	return f.removeRulesWhere(func(rid string) bool { return !keep[rid] })
}

func (f *firewall) removeRulesWhere(drop func(networkID string) bool) error {
	remaining, chainsFound := 0, false
	for _, tc := range []struct{ table, chain string }{
		{tableFilter, f.chains.isolation}, {tableFilter, f.chains.forward}, {tableNAT, f.chains.postrouting},
	} {
		exists, err := f.ipt.ChainExists(tc.table, tc.chain)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", tc.chain, err)
		}
		if !exists {
			continue
		}
		chainsFound = true
		lines, err := f.ipt.List(tc.table, tc.chain)
		if err != nil {
			return fmt.Errorf("list chain %s: %w", tc.chain, err)
		}
		// lines[0] is the chain's "-N" line, so lines[i] is rule number i.
		// Delete from the bottom so the numbers above stay valid.
		for i := len(lines) - 1; i >= 1; i-- {
			m := networkCommentRE.FindStringSubmatch(lines[i])
			if m == nil {
				continue
			}
			if !drop(m[1]) {
				remaining++
				continue
			}
			if err := f.ipt.DeleteById(tc.table, tc.chain, i); err != nil {
				return fmt.Errorf("delete rule %d of %s (%s): %w", i, tc.chain, lines[i], err)
			}
			f.log.Debug("rule removed", "rule", lines[i])
		}
	}
	if remaining == 0 && chainsFound {
		return f.removeChains()
	}
	return nil
}

// ensureChains creates mynet's chains and hooks them into FORWARD and
// POSTROUTING.
func (f *firewall) ensureChains() error {
	for _, tc := range []struct{ table, chain string }{
		{tableFilter, f.chains.forward}, {tableFilter, f.chains.isolation}, {tableFilter, f.chains.egress}, {tableNAT, f.chains.postrouting},
	} {
		if err := f.ensureChain(tc.table, tc.chain); err != nil {
			return err
		}
	}
	if err := f.ensure(rule{tableFilter, f.chains.forward, []string{"-j", f.chains.isolation}}, 1); err != nil {
		return err
	}
	if err := f.ensureEgress(); err != nil {
		return err
	}
	fwdPos, err := f.forwardJumpPosition()
	if err != nil {
		return err
	}
	for _, j := range f.jumps() {
		pos := 1
		if j.chain == "FORWARD" {
			pos = fwdPos
		}
		if err := f.ensure(j, pos); err != nil {
			return err
		}
	}
	return nil
}

// jumps hook mynet's chains into the built-in ones.
func (f *firewall) jumps() []rule {
	c := []string{"-m", "comment", "--comment", "mynet " + f.instance}
	return []rule{
		{tableFilter, "FORWARD", concat(c, []string{"-j", f.chains.forward})},
		{tableNAT, "POSTROUTING", concat(c, []string{"-j", f.chains.postrouting})},
	}
}

// forwardJumpPosition puts mynet's jump right after Docker's DOCKER-USER
// jump, so the operator's DOCKER-USER rules still come first, and before
// Docker's own verdicts.
func (f *firewall) forwardJumpPosition() (int, error) {
	lines, err := f.ipt.List(tableFilter, "FORWARD")
	if err != nil {
		return 0, fmt.Errorf("list FORWARD: %w", err)
	}
	for i, l := range lines {
		if l == "-A FORWARD -j DOCKER-USER" {
			return i + 1, nil // lines[0] is the policy, so DOCKER-USER is rule i
		}
	}
	return 1, nil
}

// ensureEgress makes the egress chain pass through Docker's isolation chain,
// when Docker has one, and then accept.
func (f *firewall) ensureEgress() error {
	want := []string{"-N " + f.chains.egress}
	for _, c := range dockerIsolationChains {
		ok, err := f.ipt.ChainExists(tableFilter, c)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", c, err)
		}
		if ok {
			want = append(want, "-A "+f.chains.egress+" -j "+c)
			break
		}
	}
	want = append(want, "-A "+f.chains.egress+" -j ACCEPT")
	have, err := f.ipt.List(tableFilter, f.chains.egress)
	if err != nil {
		return fmt.Errorf("list chain %s: %w", f.chains.egress, err)
	}
	if strings.Join(have, "\n") == strings.Join(want, "\n") {
		return nil
	}
	// Rewrite the chain: it holds two static rules, so rebuilding is
	// simpler and safer than patching it.
	for i := len(have) - 1; i >= 1; i-- {
		if err := f.ipt.DeleteById(tableFilter, f.chains.egress, i); err != nil {
			return fmt.Errorf("reset chain %s: %w", f.chains.egress, err)
		}
	}
	for _, l := range want[1:] {
		args := strings.Fields(strings.TrimPrefix(l, "-A "+f.chains.egress+" "))
		if err := f.ipt.Append(tableFilter, f.chains.egress, args...); err != nil {
			return fmt.Errorf("fill chain %s: %w", f.chains.egress, err)
		}
	}
	return nil
}

// removeChains unhooks and deletes all of mynet's chains.
func (f *firewall) removeChains() error {
	var errs []error
	for _, j := range f.jumps() {
		// iptables cannot even look for a jump to a chain that is gone, and
		// such a jump cannot exist.
		target := j.args[len(j.args)-1]
		if ok, err := f.ipt.ChainExists(j.table, target); err != nil || !ok {
			continue
		}
		if err := f.ipt.DeleteIfExists(j.table, j.chain, j.args...); err != nil {
			errs = append(errs, fmt.Errorf("delete jump %s: %w", j, err))
		}
	}
	// forward first: it references isolation and egress.
	for _, tc := range []struct{ table, chain string }{
		{tableFilter, f.chains.forward}, {tableFilter, f.chains.isolation}, {tableFilter, f.chains.egress}, {tableNAT, f.chains.postrouting},
	} {
		if err := f.ipt.ClearAndDeleteChain(tc.table, tc.chain); err != nil {
			errs = append(errs, fmt.Errorf("delete chain %s: %w", tc.chain, err))
		}
	}
	if len(errs) == 0 {
		f.log.Debug("chains removed", "instance", f.instance)
	}
	return errors.Join(errs...)
}

func (f *firewall) ensureChain(table, chain string) error {
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
	f.log.Debug("chain created", "table", table, "chain", chain)
	return nil
}

// ensure adds r if missing: appended when pos < 1, else inserted at pos.
func (f *firewall) ensure(r rule, pos int) error {
	ok, err := f.ipt.Exists(r.table, r.chain, r.args...)
	if err != nil {
		return fmt.Errorf("check rule %s: %w", r, err)
	}
	if ok {
		return nil
	}
	if pos < 1 {
		err = f.ipt.Append(r.table, r.chain, r.args...)
	} else {
		err = f.ipt.Insert(r.table, r.chain, pos, r.args...)
	}
	if err != nil {
		return fmt.Errorf("add rule %s: %w", r, err)
	}
	f.log.Debug("rule added", "rule", r.String())
	return nil
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
