package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// memIPTables is iptables-save and iptables-restore --noflush over a ruleset
// in memory, for the pure tests of what the firewall writes: each table
// commits at its COMMIT, and a failing line fails its table and stops the
// input, as iptables-restore does.
type memIPTables struct {
	rs       ruleset
	saves    int
	restores []string
	// fail, when set, fails a line it selects.
	fail func(line string) bool
}

var builtinChains = map[string][]string{
	model.TableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	model.TableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	model.TableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

func newMemIPTables(extra ...string) *memIPTables {
	m := &memIPTables{rs: ruleset{}}
	for table, chains := range builtinChains {
		for _, c := range chains {
			m.rs.table(table).chains[c] = nil
		}
	}
	for _, l := range extra { // "table -N CHAIN" or "table -A CHAIN spec"
		table, cmd, _ := strings.Cut(l, " ")
		if err := m.apply(m.rs.table(table), cmd); err != nil {
			panic(err)
		}
	}
	return m
}

func (m *memIPTables) Save() (string, error) {
	m.saves++
	var b strings.Builder
	for _, table := range tableOrder {
		t := m.rs.table(table)
		fmt.Fprintf(&b, "*%s\n", table)
		chains := slices.Sorted(func(yield func(string) bool) {
			for c := range t.chains {
				if !slices.Contains(builtinChains[table], c) && !yield(c) {
					return
				}
			}
		})
		chains = append(slices.Clone(builtinChains[table]), chains...)
		for _, c := range chains {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range chains {
			for _, spec := range t.chains[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, spec)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String(), nil
}

func (m *memIPTables) Restore(input string) error {
	m.restores = append(m.restores, input)
	var table string
	var work *tableRules
	for i, l := range strings.Split(strings.TrimSuffix(input, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
			work = m.rs.table(table).clone()
		case l == "COMMIT":
			m.rs[table] = work
		default:
			if m.fail != nil && m.fail(l) {
				return fmt.Errorf("line %d failed: injected", i+1)
			}
			if err := m.apply(work, l); err != nil {
				return fmt.Errorf("line %d failed: %w", i+1, err)
			}
		}
	}
	return nil
}

func (t *tableRules) clone() *tableRules {
	c := &tableRules{chains: map[string][]string{}, present: map[string]int{}}
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	for k, v := range t.present {
		c.present[k] = v
	}
	return c
}

// apply runs one restore line on t; only what the firewall writes.
func (m *memIPTables) apply(t *tableRules, l string) error {
	f := strings.SplitN(l, " ", 3)
	if len(f) < 2 || !t.hasChain(f[1]) && f[0] != "-N" {
		return fmt.Errorf("no chain in %q", l)
	}
	chain := f[1]
	switch f[0] {
	case "-N":
		if t.hasChain(chain) {
			return errors.New("chain exists")
		}
		t.chains[chain] = nil
	case "-F", "-X":
		for _, spec := range t.chains[chain] {
			t.present[chain+" "+spec]--
		}
		t.chains[chain] = nil
		if f[0] == "-X" {
			delete(t.chains, chain)
		}
	case "-A":
		t.add(chain, f[2])
	case "-I":
		pos, spec, _ := strings.Cut(f[2], " ")
		n, err := strconv.Atoi(pos)
		if err != nil || n < 1 || n > len(t.chains[chain])+1 {
			return fmt.Errorf("bad position in %q", l)
		}
		t.chains[chain] = slices.Insert(t.chains[chain], n-1, spec)
		t.present[chain+" "+spec]++
	case "-D":
		i := slices.Index(t.chains[chain], f[2])
		if i < 0 {
			return fmt.Errorf("no such rule: %q", l)
		}
		t.chains[chain] = slices.Delete(t.chains[chain], i, i+1)
		t.present[chain+" "+f[2]]--
	default:
		return fmt.Errorf("unexpected line %q", l)
	}
	return nil
}

// dockerChains are the chains of a Docker 28 host that decide where
// mynet's hooks and egress check go.
var dockerChains = []string{
	"filter -N DOCKER-USER", "filter -A DOCKER-USER -j RETURN",
	"filter -N DOCKER-BRIDGE", "filter -A FORWARD -j DOCKER-USER",
}

func memFirewall(m *memIPTables, v6 bool) *iptablesFirewall {
	return newIPTablesFirewall("mynet-test", m, v6, nil, slog.New(slog.DiscardHandler))
}

// TestRestoreInput checks, against golden files, what one operation
// writes in its single restore, and that an operation with nothing to
// change writes nothing.
func TestRestoreInput(t *testing.T) {
	n := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24")
	n.IPv6 = []model.Subnet{{Pool: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParsePrefix("fd00:1::1/64")}}
	ep := testEndpoint(n, eid1)
	c4, c6 := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")
	ports := []model.PortMapping{
		{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c4, Port: 80},
		{Proto: "udp", HostIP: netip.MustParseAddr("10.9.9.9"), HostPort: 5353, HostPortEnd: 5353, ContainerIP: c4, Port: 53},
		{Proto: "tcp", HostPort: 9000, HostPortEnd: 9010, ContainerIP: c4, Port: 9000},
		{Proto: "tcp", HostPort: 8080, HostPortEnd: 8080, ContainerIP: c6, Port: 80},
	}
	for _, v6 := range []bool{false, true} {
		m := newMemIPTables(dockerChains...)
		fw := memFirewall(m, v6)
		steps := []struct {
			name string
			do   func() error
		}{
			{"network", func() error { return fw.ensureNetwork(t.Context(), n, &netutil.Undo{}) }},
			{"network-again", func() error { return fw.ensureNetwork(t.Context(), n, &netutil.Undo{}) }},
			{"ports", func() error { return fw.ensurePorts(t.Context(), n, ep, ports, &netutil.Undo{}) }},
			{"ports-again", func() error { return fw.ensurePorts(t.Context(), n, ep, ports, &netutil.Undo{}) }},
			{"remove-ports", func() error { return fw.removePorts(ep, ports) }},
			{"remove-network", func() error { return fw.removeNetwork(n.ID) }},
		}
		for _, s := range steps {
			t.Run(fw.family()+"/"+s.name, func(t *testing.T) {
				m.restores = nil
				if err := s.do(); err != nil {
					t.Fatal(err)
				}
				if strings.HasSuffix(s.name, "-again") {
					if len(m.restores) != 0 {
						t.Fatalf("nothing to change, but it wrote:\n%s", strings.Join(m.restores, "--\n"))
					}
					return
				}
				if len(m.restores) != 1 {
					t.Fatalf("%d restores, want one:\n%s", len(m.restores), strings.Join(m.restores, "--\n"))
				}
				golden(t, "restore-"+fw.family()+"-"+s.name, m.restores[0])
			})
		}
		// Back to Docker's chains alone.
		if got, want := mustSave(t, m), mustSave(t, newMemIPTables(dockerChains...)); got != want {
			t.Errorf("%s: left after removal:\n%s", fw.family(), got)
		}
	}
}

func mustSave(t *testing.T, m *memIPTables) string {
	t.Helper()
	s, err := m.Save()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRestoreFailureRevertsCommittedTables: when a transaction fails in a
// later table, the tables committed before it are reverted, and what was
// there before the call stays; the undo of a committed transaction removes
// only what it added.
func TestRestoreFailureRevertsCommittedTables(t *testing.T) {
	n1, n2 := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24"), testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
	m := newMemIPTables(dockerChains...)
	fw := memFirewall(m, false)
	if err := fw.ensureNetwork(t.Context(), n1, &netutil.Undo{}); err != nil {
		t.Fatal(err)
	}
	before := mustSave(t, m)
	m.fail = func(l string) bool { return strings.Contains(l, "MASQUERADE") && strings.Contains(l, "10.2.0.0/24") }
	err := fw.ensureNetwork(t.Context(), n2, &netutil.Undo{})
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("got %v, want the injected failure", err)
	}
	if len(m.restores) < 3 {
		t.Fatalf("want the failed restore followed by one that reverts the filter table, got %d restores", len(m.restores)-1)
	}
	if after := mustSave(t, m); after != before {
		t.Fatalf("the failed transaction left changes:\n--- before\n%s--- after\n%s", before, after)
	}
	m.fail = nil
	var undo netutil.Undo
	if err := fw.ensureNetwork(t.Context(), n2, &undo); err != nil {
		t.Fatal(err)
	}
	var retErr error = errors.New("the caller failed later")
	undo.Rollback(&retErr, slog.New(slog.DiscardHandler))
	if after := mustSave(t, m); after != before {
		t.Fatalf("the undo did not restore the ruleset:\n--- before\n%s--- after\n%s", before, after)
	}
}

// TestCanonical: rules written in the orders and spellings iptables accepts
// compare equal to what iptables-save prints for them.
func TestCanonical(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "ACCEPT"}, "-p tcp -m tcp --dport 80 -j ACCEPT"},
		{[]string{"-p", "tcp", "--dport", "80", "-j", "ACCEPT"}, "-p tcp -m tcp --dport 80 -j ACCEPT"},
		{[]string{"-d", "10.9.9.9", "-j", "RETURN"}, "-d 10.9.9.9/32 -j RETURN"},
		{[]string{"-s", "10.1.0.5/24", "-j", "RETURN"}, "-s 10.1.0.0/24 -j RETURN"},
		{[]string{"!", "-d", "::1", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "X"}, "! -d ::1/128 -m addrtype --dst-type LOCAL -j X"},
		{[]string{"-m", "addrtype", "--dst-type", "LOCAL", "!", "-d", "::1/128", "-j", "X"}, "! -d ::1/128 -m addrtype --dst-type LOCAL -j X"},
		{[]string{"-o", "br", "!", "-i", "br", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "DROP"}, "! -i br -o br -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP"},
		{[]string{"-m", "comment", "--comment", "mynet net=1 ep=2", "--jump", "ACCEPT"}, `-m comment --comment "mynet net=1 ep=2" -j ACCEPT`},
		{[]string{"-m", "comment", "--comment", `a"b`, "-j", "ACCEPT"}, `-m comment --comment "a\"b" -j ACCEPT`},
	} {
		if got := canonical(tc.args); got != tc.want {
			t.Errorf("canonical(%q) = %q, want %q", tc.args, got, tc.want)
		}
		// What iptables-save prints reads back as the same rule.
		if got := canonical(splitRule(tc.want)); got != tc.want {
			t.Errorf("canonical(splitRule(%q)) = %q", tc.want, got)
		}
	}
}

// TestEnsureAllRepairsWithOneReadAndOneWrite: the reconcile's check reads
// the ruleset once and writes only what is missing (rules of several
// networks and endpoints deleted from outside) in one restore, reports
// how many rules that is, and writes nothing when nothing is missing.
func TestEnsureAllRepairsWithOneReadAndOneWrite(t *testing.T) {
	n1, n2 := testNetwork(nid1, "10.1.0.0/24", "10.1.0.1/24"), testNetwork(nid2, "10.2.0.0/24", "10.2.0.1/24")
	ep := testEndpoint(n1, eid1)
	for i := range 100 {
		ep.Ports = append(ep.Ports, model.PortMapping{Proto: "tcp", HostPort: uint16(8000 + 2*i), HostPortEnd: uint16(8000 + 2*i), ContainerIP: netip.MustParseAddr("10.1.0.2"), Port: 80})
	}
	m := newMemIPTables(dockerChains...)
	fw := memFirewall(m, false)
	for _, n := range []model.Network{n1, n2} {
		if err := fw.ensureNetwork(t.Context(), n, &netutil.Undo{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.ensurePorts(t.Context(), n1, ep, ep.Ports, &netutil.Undo{}); err != nil {
		t.Fatal(err)
	}
	good := mustSave(t, m)
	// Damage: a port's DNAT, n2's masquerade and the nat hooks.
	var damage tx
	nat := m.rs.table(model.TableNAT)
	for _, chain := range []string{fw.chains.DNAT, fw.chains.Postrouting, "PREROUTING", "POSTROUTING"} {
		for _, spec := range nat.chains[chain] {
			if strings.Contains(spec, "--dport 8010 ") || strings.Contains(spec, "10.2.0.0/24") || strings.Contains(spec, "mynet mynet-test") {
				damage.line(model.TableNAT, "-D "+chain+" "+spec)
			}
		}
	}
	if err := m.Restore(damage.render()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                 string
		wantAdded, wantWrite int
	}{{"damaged", damage.size(), 1}, {"intact", 0, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			m.saves, m.restores = 0, nil
			added, err := fw.ensureAll(t.Context(), []model.Network{n1, n2}, []model.Endpoint{ep}, &netutil.Undo{})
			if err != nil {
				t.Fatal(err)
			}
			if added != tc.wantAdded || m.saves != 1 || len(m.restores) != tc.wantWrite {
				t.Errorf("added %d rules with %d reads and %d restores, want %d with 1 and %d:\n%s", added, m.saves, len(m.restores), tc.wantAdded, tc.wantWrite, strings.Join(m.restores, "--\n"))
			}
			// A rule appended again comes after the chain's others: only
			// the order may differ.
			if got := mustSave(t, m); sortedLines(got) != sortedLines(good) {
				t.Errorf("after the repair:\n%s\nwant:\n%s", got, good)
			}
		})
	}
}
