package bridge

// One iptables-restore transaction per operation and family: what the
// operation needs is compared with one read of the ruleset, and only the
// difference is written.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// IPTables reads and writes one family's ruleset: the iptables-save and
// iptables-restore (or ip6tables-) binaries in production; tests wrap
// them to inject failures.
type IPTables interface {
	// Save returns what iptables-save prints for all tables.
	Save() (string, error)
	// Restore runs iptables-restore --noflush on input. Each table's
	// lines take effect together at its COMMIT, or not at all; the tables
	// before a failing one stay committed.
	Restore(input string) error
}

// execIPTables runs the binaries found on PATH at startup; nft says
// whether they are iptables-nft (onNFTables).
type execIPTables struct {
	save, restore string
	nft           bool
}

// newIPTables finds iptables-save and iptables-restore (or ip6tables-)
// first on PATH, as dockerd finds iptables, so that mynet's rules land in
// the same backend (nft or legacy) as Docker's.
func newIPTables(v6 bool) (IPTables, error) {
	prefix := "iptables"
	if v6 {
		prefix = "ip6tables"
	}
	var x execIPTables
	for _, p := range []*string{&x.save, &x.restore} {
		name := prefix + "-save"
		if p == &x.restore {
			name = prefix + "-restore"
		}
		path, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("find %s: %w; install the iptables package", name, err)
		}
		*p = path
	}
	x.nft = onNFTables(x.save)
	return x, nil
}

func (x execIPTables) nfTables() bool { return x.nft }

func (x execIPTables) Save() (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(x.save)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", x.save, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Restore passes --wait so that it queues on the xtables lock behind
// dockerd's iptables (legacy backend) instead of failing.
func (x execIPTables) Restore(input string) error {
	var stderr bytes.Buffer
	cmd := exec.Command(x.restore, "--noflush", "--wait=30")
	cmd.Stdin = strings.NewReader(input)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", x.restore, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// tableOrder is the order in which a transaction writes its tables.
var tableOrder = []string{model.TableFilter, model.TableNAT, model.TableMangle}

// tx is one iptables-restore input: lines per table, and what they add,
// so that its undo removes exactly that.
type tx struct {
	lines   map[string][]string
	added   []txRule
	created []model.TableChain
}

// txRule is a rule a transaction adds, in canonical form.
type txRule struct{ table, chain, spec string }

func (t *tx) line(table, l string) {
	if t.lines == nil {
		t.lines = map[string][]string{}
	}
	t.lines[table] = append(t.lines[table], l)
}

func (t *tx) empty() bool { return len(t.lines) == 0 }

// size is the number of lines, for logs.
func (t *tx) size() int {
	n := 0
	for _, ls := range t.lines {
		n += len(ls)
	}
	return n
}

// render is the input of iptables-restore --noflush.
func (t *tx) render() string {
	var b strings.Builder
	for _, table := range tableOrder {
		if len(t.lines[table]) == 0 {
			continue
		}
		b.WriteString("*" + table + "\n")
		for _, l := range t.lines[table] {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// planChain declares a chain the read did not find.
func (f *iptablesFirewall) planChain(rs ruleset, t *tx, table, chain string) {
	tr := rs.table(table)
	if tr.hasChain(chain) {
		return
	}
	t.line(table, "-N "+chain)
	tr.chains[chain] = nil
	t.created = append(t.created, model.TableChain{Table: table, Chain: chain})
}

// planRule adds r unless the read found it (or the transaction adds it
// already).
func (f *iptablesFirewall) planRule(rs ruleset, t *tx, r rule) {
	spec := canonical(r.args)
	tr := rs.table(r.table)
	if tr.has(r.chain, spec) {
		return
	}
	if r.top {
		t.line(r.table, "-I "+r.chain+" 1 "+spec)
	} else {
		t.line(r.table, "-A "+r.chain+" "+spec)
	}
	tr.add(r.chain, spec)
	t.added = append(t.added, txRule{r.table, r.chain, spec})
}

// commit applies t in one iptables-restore, after checking ctx: no new
// transaction starts once it is done, but a running one is not cut short,
// since it is one atomic change per table. A failure reverts the tables
// committed before the failing one, so a failed commit changes nothing
// but the rewrites and moves that are never undone (ensureEgress,
// ensureHooks). On success, what t added goes onto undo.
func (f *iptablesFirewall) commit(ctx context.Context, t *tx, what string, undo *netutil.Undo) error {
	if t.empty() {
		return nil
	}
	if err := stopped(ctx, f.family()+" rules of "+what); err != nil {
		return err
	}
	if err := f.restore(t); err != nil {
		err = fmt.Errorf("%s: write %s rules: %w", what, f.family(), err)
		if rerr := f.revert(t); rerr != nil {
			err = errors.Join(err, fmt.Errorf("%s: undo the tables committed before the failure: %w", what, rerr))
		}
		return err
	}
	f.log.Debug("rules written", "family", f.family(), "of", what, "lines", t.size(), "added", len(t.added), "chains_created", len(t.created))
	if undo != nil && (len(t.added) > 0 || len(t.created) > 0) {
		undo.Push("remove the "+f.family()+" rules added for "+what, func() error {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.revert(t)
		})
	}
	return nil
}

// revert removes what t added and what it created that is present now:
// one read, one restore. The caller holds f.mu.
func (f *iptablesFirewall) revert(t *tx) error {
	rs, err := f.read()
	if err != nil {
		return err
	}
	var r tx
	for _, a := range slices.Backward(t.added) {
		if rs.table(a.table).has(a.chain, a.spec) {
			r.line(a.table, "-D "+a.chain+" "+a.spec)
		}
	}
	// Flush all before deleting any: the created chains may jump to each
	// other.
	for _, c := range t.created {
		if rs.table(c.Table).hasChain(c.Chain) {
			r.line(c.Table, "-F "+c.Chain)
		}
	}
	for _, c := range slices.Backward(t.created) {
		if rs.table(c.Table).hasChain(c.Chain) {
			r.line(c.Table, "-X "+c.Chain)
		}
	}
	if r.empty() {
		return nil
	}
	if err := f.restore(&r); err != nil {
		return fmt.Errorf("remove %s rules: %w", f.family(), err)
	}
	return nil
}
