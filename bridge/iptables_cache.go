package bridge

// The iptables firewall's last read of the ruleset, kept while the
// ruleset generation says nobody else changed it, so that an operation
// compares with it instead of running iptables-save (35 ms at 3,000
// rules), and the periodic fingerprint reads nothing when nothing
// changed.

import (
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// nftBacked is implemented by an IPTables whose tables are nf_tables ones
// (iptables-nft): the ruleset generation then covers them. An IPTables
// without it (iptables-legacy, a test's wrapper) is read each time.
type nftBacked interface{ nfTables() bool }

// onNFTables runs `iptables-save --version` once, at startup: it names its
// backend in parentheses, "iptables-save v1.8.9 (nf_tables)" or
// "(legacy)".
func onNFTables(save string) bool {
	out, err := exec.Command(save, "--version").Output()
	return err == nil && strings.Contains(string(out), "(nf_tables)")
}

// iptCache is the ruleset as the firewall last read or wrote it, valid at
// ruleset generation gen.
type iptCache struct {
	gen    uint32
	rs     ruleset         // never planned on: operations plan on a clone
	tables map[string]bool // the tables the read found
	lines  []string        // ownLines, computed on demand
}

// cached returns the cached ruleset when the generation shows that
// nothing but mynet's writes to other tables was committed since it was
// read; else it reads the ruleset and caches it at the generation taken
// before the read (a commit during the read shows as another generation
// next time). The caller holds f.mu and must not change what it gets.
func (f *iptablesFirewall) cached() (*iptCache, error) {
	gen, ok := f.gen.current()
	if ok && f.cache != nil && f.gen.onlyOthers(f.cache.gen, gen, f.family()) {
		f.cache.gen = gen
		return f.cache, nil
	}
	f.cache = nil
	out, err := f.ipt.Save()
	if err != nil {
		return nil, fmt.Errorf("read the %s rules: %w", f.family(), err)
	}
	c := &iptCache{gen: gen, rs: parseSave(out), tables: map[string]bool{}}
	for name := range c.rs {
		c.tables[name] = true
	}
	f.reads++
	if ok {
		f.cache = c
	}
	return c, nil
}

// read is the family's ruleset for an operation to plan on: its own copy.
func (f *iptablesFirewall) read() (ruleset, error) {
	c, err := f.cached()
	if err != nil {
		return nil, err
	}
	return c.rs.clone(), nil
}

func (rs ruleset) clone() ruleset {
	out := make(ruleset, len(rs))
	for name, t := range rs {
		chains := make(map[string][]string, len(t.chains))
		for c, specs := range t.chains {
			chains[c] = slices.Clone(specs)
		}
		out[name] = &tableRules{chains: chains, present: maps.Clone(t.present)}
	}
	return out
}

// restore runs t in one iptables-restore and keeps the cache in step:
// when the generation moved by exactly one commit per table of t (what
// iptables-nft-restore makes, one per COMMIT; TestRestoreGenerations), no
// one else committed, and the cache becomes what t made of it. Otherwise,
// and after a failure, it is dropped and the next operation reads.
func (f *iptablesFirewall) restore(t *tx) error {
	before, ok := f.gen.current()
	c := f.cache
	f.cache = nil
	if err := f.ipt.Restore(t.render()); err != nil {
		return err
	}
	after, okAfter := f.gen.current()
	if !ok || !okAfter || after != before+uint32(len(t.lines)) {
		return nil
	}
	f.gen.wrote(before, after, f.family())
	if c == nil || c.gen != before {
		return nil
	}
	if err := c.apply(t); err != nil {
		f.log.Debug("ruleset cache dropped", "family", f.family(), "err", err)
		return nil
	}
	c.gen, c.lines = after, nil
	f.cache = c
	return nil
}

// apply makes the cached ruleset what iptables-restore made of it with
// t's lines, table by table as render writes them. A line it cannot
// follow (a table the read did not find, which iptables-nft creates with
// chains of its own; an unknown chain or rule) is an error: the cache is
// then dropped, never guessed.
func (c *iptCache) apply(t *tx) error {
	for _, table := range tableOrder {
		lines := t.lines[table]
		if len(lines) == 0 {
			continue
		}
		if !c.tables[table] {
			return fmt.Errorf("table %s was not read", table)
		}
		tr := c.rs[table]
		for _, l := range lines {
			if err := tr.apply(l); err != nil {
				return fmt.Errorf("table %s: %q: %w", table, l, err)
			}
		}
	}
	return nil
}

// apply follows one line of iptables-restore's input, as written by tx's
// users: -N, -X, -F, -A, -I CHAIN POS, -D with a rule's spec.
func (t *tableRules) apply(l string) error {
	op, rest, _ := strings.Cut(l, " ")
	chain, spec, _ := strings.Cut(rest, " ")
	if _, ok := t.chains[chain]; !ok && op != "-N" {
		return errors.New("no such chain")
	}
	switch op {
	case "-N":
		if _, ok := t.chains[chain]; ok {
			return errors.New("chain exists")
		}
		t.chains[chain] = nil
	case "-X":
		if len(t.chains[chain]) > 0 {
			return errors.New("chain not empty")
		}
		delete(t.chains, chain)
	case "-F":
		for _, s := range t.chains[chain] {
			t.present[chain+" "+s]--
		}
		t.chains[chain] = nil
	case "-A":
		t.add(chain, spec)
	case "-I":
		pos, s, _ := strings.Cut(spec, " ")
		i, err := strconv.Atoi(pos)
		if err != nil || i < 1 || i > len(t.chains[chain])+1 {
			return errors.New("bad position")
		}
		t.chains[chain] = slices.Insert(t.chains[chain], i-1, s)
		t.present[chain+" "+s]++
	case "-D":
		i := slices.Index(t.chains[chain], spec)
		if i < 0 {
			return errors.New("no such rule")
		}
		t.chains[chain] = slices.Delete(t.chains[chain], i, i+1)
		t.present[chain+" "+spec]--
	default:
		return errors.New("unknown operation")
	}
	return nil
}
