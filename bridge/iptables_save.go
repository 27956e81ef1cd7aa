package bridge

// Reading iptables-save output, and the canonical form in which mynet's
// rules are compared with it and written to iptables-restore.

import (
	"net/netip"
	"strings"
)

// ruleset is one family's ruleset as one iptables-save printed it.
type ruleset map[string]*tableRules

// tableRules are one table's chains, each with its rules in order as
// canonical specs (the rule without "-A CHAIN").
type tableRules struct {
	chains map[string][]string
	// present counts each chain+" "+spec, for lookups in a chain of
	// thousands of port rules.
	present map[string]int
}

// table returns the table's rules; a table iptables-save did not print
// (a legacy table whose module is not loaded) is empty.
func (rs ruleset) table(name string) *tableRules {
	t := rs[name]
	if t == nil {
		t = &tableRules{chains: map[string][]string{}, present: map[string]int{}}
		rs[name] = t
	}
	return t
}

func (t *tableRules) hasChain(chain string) bool {
	_, ok := t.chains[chain]
	return ok
}

func (t *tableRules) has(chain, spec string) bool { return t.present[chain+" "+spec] > 0 }

// add records a rule as present. It goes at the chain's end even when
// the transaction inserts it at the top: moving a chain of thousands of
// port rules for each would cost more than the restore, and no step that
// plans after it depends on the order of the rules a transaction adds.
func (t *tableRules) add(chain, spec string) {
	t.chains[chain] = append(t.chains[chain], spec)
	t.present[chain+" "+spec]++
}

// parseSave reads iptables-save's output: "*table", ":CHAIN policy
// [counters]", "-A CHAIN spec", "COMMIT", and comments.
func parseSave(out string) ruleset {
	rs := ruleset{}
	var t *tableRules
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			t = rs.table(strings.TrimSpace(l[1:]))
		case t == nil:
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			if _, ok := t.chains[name]; !ok {
				t.chains[name] = nil
			}
		case strings.HasPrefix(l, "-A "):
			chain, spec, _ := strings.Cut(l[3:], " ")
			t.add(chain, canonical(splitRule(spec)))
		}
	}
	return rs
}

// splitRule splits a rule as iptables-save prints it into arguments:
// words, or a double-quoted string in which a backslash escapes the next
// character (comments with spaces).
func splitRule(s string) []string {
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			quoted, inWord = !quoted, true
		case c == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// quoteArg quotes an argument as iptables-save does, so that
// iptables-restore reads it back as one.
func quoteArg(a string) string {
	if a != "" && !strings.ContainsAny(a, " \t\"\\'") {
		return a
	}
	return `"` + quoteEscapes.Replace(a) + `"`
}

var quoteEscapes = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// baseOptions are the options iptables-save prints first, in its order,
// each with its long name.
var baseOptions = []struct{ short, long string }{
	{"-s", "--source"}, {"-d", "--destination"}, {"-i", "--in-interface"}, {"-o", "--out-interface"}, {"-p", "--protocol"},
}

func baseIndex(a string) int {
	for i, o := range baseOptions {
		if a == o.short || a == o.long {
			return i
		}
	}
	return -1
}

// canonical is a rule's arguments as iptables-save prints them, quoted,
// so that a rule mynet builds compares equal to the same rule read back:
// the address, interface and protocol options first in save's order
// (iptables accepts them anywhere), addresses as prefixes ("/32"), the
// protocol's match named ("-p tcp -m tcp"), then the matches in the order
// given and the target. It is also the spec written to iptables-restore.
func canonical(args []string) string {
	base := make([][]string, len(baseOptions))
	var groups [][]string // "-m name ..." and "-j target ...", in order
	var loose []string    // options of the protocol's implicit match
	proto := ""
	for i := 0; i < len(args); i++ {
		a, neg := args[i], false
		if a == "!" && i+1 < len(args) && baseIndex(args[i+1]) >= 0 {
			neg, i = true, i+1
			a = args[i]
		}
		if b := baseIndex(a); b >= 0 && i+1 < len(args) {
			i++
			v := args[i]
			if b <= 1 {
				v = canonicalPrefix(v)
			}
			if b == 4 {
				proto = v
			}
			base[b] = []string{baseOptions[b].short, v}
			if neg {
				base[b] = append([]string{"!"}, base[b]...)
			}
			continue
		}
		switch {
		case groupOptions[a] != "" && i+1 < len(args):
			groups = append(groups, []string{groupOptions[a], args[i+1]})
			i++
		case len(groups) == 0:
			loose = append(loose, a)
		default:
			groups[len(groups)-1] = append(groups[len(groups)-1], a)
		}
	}
	if len(loose) > 0 && proto != "" && !hasMatch(groups, proto) {
		groups = append([][]string{append([]string{"-m", proto}, loose...)}, groups...)
		loose = nil
	}
	var out []string
	for _, b := range base {
		out = append(out, b...)
	}
	out = append(out, loose...)
	for _, g := range groups {
		out = append(out, g...)
	}
	for i, a := range out {
		out[i] = quoteArg(a)
	}
	return strings.Join(out, " ")
}

// groupOptions start a match or the target, by their short names.
var groupOptions = map[string]string{"-m": "-m", "--match": "-m", "-j": "-j", "--jump": "-j", "-g": "-g", "--goto": "-g"}

func hasMatch(groups [][]string, name string) bool {
	for _, g := range groups {
		if g[0] == "-m" && g[1] == name {
			return true
		}
	}
	return false
}

// canonicalPrefix writes an address as the prefix iptables-save prints:
// 10.0.0.1 as 10.0.0.1/32, 10.0.0.5/24 as 10.0.0.0/24.
func canonicalPrefix(v string) string {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p.Masked().String()
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	return v
}
