package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
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

// takeSnapshot records mynet's links and iptables rules, and p's state
// records unless p is nil.
func takeSnapshot(p *plugin) (snapshot, error) {
	var snap snapshot
	links, err := run("ip", "-o", "link")
	if err != nil {
		return nil, err
	}
	for _, name := range linkNames(links) {
		if strings.HasPrefix(name, env.linkPrefix) {
			snap = append(snap, "link "+name)
		}
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		// Without -c, rules carry no counters; chain declarations still do.
		out, err := run(tool + "-save")
		if err != nil {
			return nil, err
		}
		snap = append(snap, mynetRules(tool, out)...)
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

// mynetRules returns the lines of iptables-save output that mention mynet,
// each prefixed with the tool and table it came from.
func mynetRules(tool, out string) []string {
	var rules []string
	table := ""
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.Contains(strings.ToLower(line), "mynet"):
			line = chainCounters.ReplaceAllString(line, "")
			rules = append(rules, fmt.Sprintf("%s %s: %s", tool, table, line))
		}
	}
	return rules
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
	deadline := time.Now().Add(leakGrace)
	for {
		after, err := takeSnapshot(env.plugin)
		if err != nil {
			s.t.Errorf("leak check: %v", err)
			return
		}
		gone, added := before.diff(after)
		if len(gone)+len(added) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("leak check: %v after cleanup, mynet's objects differ from before the scenario\nleft behind:%s\ngone:%s",
				leakGrace, bullets(added), bullets(gone))
			return
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
