package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mynet/mynet/internal/model"
)

// leakGrace is how long cleanup may take to settle: the kernel destroys a
// container's network namespace, and the veth end inside it, asynchronously.
const leakGrace = 5 * time.Second

// snapshot is everything mynet owns on the host and in its own records, one
// sorted line per object, so that two snapshots compare as sets:
//
//	link mn-0123456789ab
//	iptables filter: -A MYNET-FORWARD -i mn-0123456789ab ...
//	plugin Endpoints: {"ID":...}
type snapshot []string

// takeSnapshot records mynet's links and firewall rules (iptables, or its
// nftables tables with MYNET_E2E_FIREWALL=nftables), and p's state
// records unless p is nil.
func takeSnapshot(p *plugin) (snapshot, error) {
	var snap snapshot
	links, err := run("ip", "-o", "link")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(links, "\n")
	foreign := map[string]bool{}
	for _, line := range lines {
		if name := linkNames(line); len(name) == 1 && foreignLink(line) {
			foreign[name[0]] = true
		}
	}
	for _, line := range lines {
		name := linkNames(line)
		// A veth's container end carries no alias; while it is on the
		// host, its peer tells whose it is.
		if len(name) == 1 && strings.HasPrefix(name[0], env.linkPrefix) && !foreign[name[0]] && !foreign[vethPeer(line)] {
			snap = append(snap, "link "+name[0])
		}
	}
	sets, err := rulesets()
	if err != nil {
		return nil, err
	}
	for source, out := range sets {
		if usesNFT() {
			// The plugin's own tables: every line is its.
			for _, line := range strings.Split(out, "\n") {
				if strings.TrimSpace(line) != "" {
					snap = append(snap, source+": "+line)
				}
			}
			continue
		}
		rules, err := mynetRules(source, out)
		if err != nil {
			return nil, err
		}
		snap = append(snap, rules...)
	}
	if p != nil {
		st, err := p.state()
		if err != nil {
			return nil, fmt.Errorf("plugin state: %w", err)
		}
		for kind, records := range map[string][]json.RawMessage{"Networks": st.Networks, "Endpoints": st.Endpoints, "Pools": st.Pools} {
			for _, r := range records {
				var one bytes.Buffer
				if err := json.Compact(&one, r); err != nil {
					return nil, fmt.Errorf("plugin state %s: %w", kind, err)
				}
				snap = append(snap, fmt.Sprintf("plugin %s: %s", kind, one.String()))
			}
		}
	}
	slices.Sort(snap)
	return snap, nil
}

var chainCounters = regexp.MustCompile(` \[\d+:\d+\]$`)

// Another mynet may run beside the suite, such as a developer's own under
// another --name. Its links and rules are not the suite plugin's, and their
// coming and going during a scenario is no leak. The suite's plugin tags its
// links with the alias mynet:<name>:..., and each of its rules is in one of
// its own chains (model.ChainsFor) or jumps to one.

// foreignLink reports whether an `ip -o link` line is a link of another
// mynet instance. Links without a mynet alias count as the suite's.
func foreignLink(line string) bool {
	if env.plugin == nil {
		return false
	}
	_, alias, tagged := strings.Cut(line, " alias mynet:")
	return tagged && !strings.HasPrefix(alias, env.plugin.name+":")
}

// vethPeer returns the peer's name in an `ip -o link` line of a veth whose
// peer is in the same namespace (7: mnc0123@mnv0123: ...), or "".
func vethPeer(line string) string {
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return ""
	}
	_, peer, _ := strings.Cut(strings.TrimSuffix(fields[1], ":"), "@")
	return peer
}

// mentionsChain reports whether an iptables-save line mentions one of chains.
func mentionsChain(line string, chains []string) bool {
	return slices.ContainsFunc(chains, func(c string) bool { return strings.Contains(line, c) })
}

// mynetRules returns the lines of iptables-save output that mention mynet
// (when the suite runs its plugin: the lines of its chains), each prefixed
// with the tool and table it came from.
func mynetRules(tool, out string) ([]string, error) {
	var rules, own []string
	comment := ""
	if env.plugin != nil {
		own, comment = model.ChainsFor(env.plugin.name).All(), `"mynet `+env.plugin.name+`"`
	}
	table := ""
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case !strings.Contains(strings.ToLower(line), "mynet"):
		case own != nil && !mentionsChain(line, own):
			if strings.Contains(line, comment) {
				return nil, fmt.Errorf("%s: a rule of the plugin outside its chains %q, which the leak check expects: %s", tool, own, line)
			}
		default:
			line = chainCounters.ReplaceAllString(line, "")
			rules = append(rules, fmt.Sprintf("%s %s: %s", tool, table, line))
		}
	}
	return rules, nil
}

// diff returns the lines only in a and only in b.
func (a snapshot) diff(b snapshot) (onlyA, onlyB []string) {
	for _, l := range a {
		if _, found := slices.BinarySearch(b, l); !found {
			onlyA = append(onlyA, l)
		}
	}
	for _, l := range b {
		if _, found := slices.BinarySearch(a, l); !found {
			onlyB = append(onlyB, l)
		}
	}
	return onlyA, onlyB
}

// checkLeaks compares the host and plugin state after cleanup with before.
// As the suite starts with a fresh plugin, "no new plugin records" means
// empty records, unless an earlier scenario already leaked some.
func (s *scenario) checkLeaks(before snapshot) {
	s.t.Helper()
	added, gone, err := settle(before)
	switch {
	case err != nil:
		s.t.Errorf("leak check: %v", err)
	case len(added)+len(gone) > 0:
		s.t.Errorf("leak check: %v after cleanup, mynet's objects differ from before the scenario\nleft behind:%s\ngone:%s",
			leakGrace, bullets(added), bullets(gone))
	}
}

// settle waits up to leakGrace for mynet's objects to be those of before
// again and returns the lines that are still only in the current state
// (added) or only in before (gone).
func settle(before snapshot) (added, gone []string, err error) {
	deadline := time.Now().Add(leakGrace)
	for {
		after, err := takeSnapshot(env.plugin)
		if err != nil {
			return nil, nil, err
		}
		gone, added = before.diff(after)
		if len(gone)+len(added) == 0 || time.Now().After(deadline) {
			return added, gone, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func bullets(lines []string) string {
	if len(lines) == 0 {
		return " none"
	}
	return "\n  " + strings.Join(lines, "\n  ")
}
