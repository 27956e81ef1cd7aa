package bridge

// Verification by comparison for the nftables backend: the reconcile
// reads the table once (its chains, one dump of all its rules, the
// elements of each set), compares it with what the networks and ports
// want, and writes only the difference in one batch.
//
// A rule is recognised by its tag, a comment (rule userdata, as nft's
// "comment") holding a digest of the rule's text and of the layout
// version: the expressions the kernel lists back differ in form from the
// ones built (set IDs, counters), so they are not compared one by one. A
// chain is right when its rules' tags are the wanted ones, in order: a
// rule deleted, added, or reordered from outside, a chain flushed, a rule
// of an older mynet, each changes the list and the chain is written
// whole. A rule changed in place with its comment kept is not seen here;
// the fingerprint, which hashes the expressions, sees it and the next
// EnsureNetwork of that network writes its chains whole.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"

	"github.com/google/nftables"

	"github.com/mynet/mynet/internal/model"
	"github.com/mynet/mynet/netutil"
)

// nftLayout is part of every rule's tag: a release that builds a rule's
// expressions differently for the same text changes it, so the reconcile
// rewrites the old rules.
const nftLayout = "1"

// tag is the rule's comment: "mynet " and 12 hex digits of its digest.
func (r *nftRule) tag() string {
	sum := sha256.Sum256([]byte(nftLayout + "\x00" + r.String()))
	return "mynet " + hex.EncodeToString(sum[:6])
}

func tagsOf(rules []*nftRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.tag()
	}
	return out
}

func dumpedTags(rules []nftDumpedRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.tag
	}
	return out
}

// nftWant is what the networks and ports want of one family's table.
type nftWant struct {
	chains []nftNetChain
	tags   map[string][]string // chain -> its rules' tags
	netOf  map[string]string   // chain -> network ID
	elems  []nftElem
	ports  []nftElem
}

// nftNetMemo is a network's objects as last built, with its chains'
// tags, and the network they were built from: a pass reuses them while
// the network is the same, which is most of a periodic pass's cost saved.
type nftNetMemo struct {
	sig    string
	chains []nftNetChain
	tags   [][]string
	elems  []nftElem
}

// want builds what the networks and ports want, under f.mu (the memo).
func (f *nftFirewall) want(o nftObjs, networks []model.Network, endpoints []model.Endpoint) nftWant {
	w := nftWant{tags: map[string][]string{}, netOf: map[string]string{}}
	memo := make(map[string]nftNetMemo, len(networks))
	for _, n := range networks {
		sig := fmt.Sprintf("%+v", n)
		m, ok := f.memo[n.ID]
		if !ok || m.sig != sig {
			m = nftNetMemo{sig: sig}
			m.chains, m.elems = o.networkObjects(n)
			for _, ch := range m.chains {
				m.tags = append(m.tags, tagsOf(ch.rules))
			}
		}
		memo[n.ID] = m
		for i, ch := range m.chains {
			w.netOf[ch.name], w.tags[ch.name] = n.ID, m.tags[i]
		}
		w.chains = append(w.chains, m.chains...)
		w.elems = append(w.elems, m.elems...)
	}
	f.memo = memo
	seen := map[string]bool{}
	for _, ep := range endpoints {
		for _, e := range o.portElems(ep, ep.Ports) {
			if !seen[e.set+string(e.key)] { // a container port several host ports map to
				seen[e.set+string(e.key)] = true
				w.ports = append(w.ports, e)
			}
		}
	}
	return w
}

// digest sums up what is wanted: every chain's name and rule tags, every
// element's set, key, data and comment.
func (w nftWant) digest() string {
	h := sha256.New()
	for _, ch := range w.chains {
		fmt.Fprintf(h, "chain %s %v\n", ch.name, w.tags[ch.name])
	}
	for _, e := range append(w.elems, w.ports...) {
		fmt.Fprintf(h, "%s %x %x %s %s\n", e.set, e.key, e.val, e.jump, e.comment)
	}
	return string(h.Sum(nil))
}

// nftVerified is the ruleset generation at which a pass last found the
// table as wanted, and the digest of what it wanted.
type nftVerified struct {
	gen uint32
	sig string
}

// sameElem reports whether the kernel's element is the one wanted.
func sameElem(have nftables.SetElement, e nftElem) bool {
	if have.Comment != e.comment {
		return false
	}
	if e.jump == "" {
		return slices.Equal(have.Val, e.val)
	}
	return nftJump(have) == e.jump
}

// elemDiff are the wanted elements the kernel lacks or has otherwise
// (stale: to delete before adding them again).
func elemDiff(st nftState, want []nftElem) (add, stale []nftElem) {
	for _, e := range want {
		have, ok := st.elem(e)
		if ok && sameElem(have, e) {
			continue
		}
		if ok {
			stale = append(stale, e)
		}
		add = append(add, e)
	}
	return add, stale
}

// dockerBridgeDiff brings the docker-bridges set to Docker's bridges as
// its table names them now.
func dockerBridgeDiff(st nftState) (add, gone []nftElem) {
	want := dockerBridgeElems(st.docker)
	add, _ = elemDiff(st, want)
	keep := map[string]bool{}
	for _, e := range want {
		keep[string(e.key)] = true
	}
	for _, have := range st.elems[nsDockerBridges] {
		if !keep[string(have.Key)] {
			gone = append(gone, nftElem{set: nsDockerBridges, key: have.Key, text: fmt.Sprintf("%q", string(trimNUL(have.Key)))})
		}
	}
	return add, gone
}

func trimNUL(b []byte) []byte {
	if i := slices.Index(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// ensureAll compares the table, read once, with what the networks and
// the endpoints' ports want, and writes the difference in one batch: the
// table's fixed objects when any of them is missing or wrong, each chain
// whose rules are not the wanted ones (whole), the elements missing or
// wrong, and the docker-bridges set brought up to date. It returns how
// many rules and elements it wrote; with nothing to repair it writes
// nothing. Undo removes the networks whose chains it created, the
// elements it added, and the table if it created it.
func (f *nftFirewall) ensureAll(ctx context.Context, networks []model.Network, endpoints []model.Endpoint, undo *netutil.Undo) (int, error) {
	o := f.objs()
	if err := stopped(ctx, f.family()+" rules"); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	w := f.want(o, networks, endpoints)
	if len(w.chains) == 0 && len(w.ports) == 0 {
		return 0, nil
	}
	// Nothing committed in the namespace's ruleset since the last pass
	// found the table as wanted, and the same wanted: nothing to read.
	gen, genErr := f.genID()
	sig := w.digest()
	if genErr == nil && gen == f.verified.gen && sig == f.verified.sig {
		return 0, nil
	}
	f.verified = nftVerified{}
	st, err := f.read(o, nftSetOrder)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", f.tableName(), err)
	}
	rules := map[string][]nftDumpedRule{}
	if st.exists {
		if rules, err = f.dumpRules(o, false); err != nil {
			return 0, err
		}
	}
	b := newNFTBatch(f.conn, o)
	n := 0
	if base := o.baseRules(); !st.exists || f.baseDiffers(st, rules, base) {
		b.base()
		for _, rs := range base {
			n += len(rs)
		}
	}
	written, created := planChains(b, w, st, rules)
	n += written
	add, stale := elemDiff(st, append(w.elems, w.ports...))
	dockerAdd, dockerGone := dockerBridgeDiff(st)
	b.elems(false, append(stale, dockerGone...))
	b.elems(true, append(add, dockerAdd...))
	n += len(add) + len(dockerAdd) + len(dockerGone)
	if n == 0 {
		if genErr == nil {
			// Read before the table: a commit in between shows as
			// another generation next time, and costs one more read.
			f.verified = nftVerified{gen: gen, sig: sig}
		}
		return 0, nil
	}
	if err := b.flush(); err != nil {
		return 0, fmt.Errorf("repair %s (%d rules and elements): %w", f.tableName(), n, err)
	}
	f.log.Debug("nftables rules repaired", "table", f.tableName(), "written", n)
	f.pushEnsureAllUndo(undo, st.exists, created, add)
	return n, nil
}

// planChains writes each network chain whose rules are not the wanted
// ones, whole, and returns how many rules that is and the networks none of
// whose chains were there (undo removes those whole).
func planChains(b *nftBatch, w nftWant, st nftState, rules map[string][]nftDumpedRule) (int, map[string]bool) {
	n, created := 0, map[string]bool{}
	for _, ch := range w.chains {
		created[w.netOf[ch.name]] = created[w.netOf[ch.name]] || !st.chains[ch.name]
	}
	for _, ch := range w.chains {
		if st.chains[ch.name] {
			created[w.netOf[ch.name]] = false
			if slices.Equal(dumpedTags(rules[ch.name]), w.tags[ch.name]) {
				continue
			}
		}
		b.chain(&nftables.Chain{Name: ch.name, Table: b.o.table}, ch.rules)
		n += len(ch.rules)
	}
	return n, created
}

// baseDiffers reports whether a set or a fixed chain of the table is
// missing or its rules are not the wanted ones.
func (f *nftFirewall) baseDiffers(st nftState, rules map[string][]nftDumpedRule, base map[string][]*nftRule) bool {
	for _, name := range nftSetOrder {
		if _, ok := st.elems[name]; !ok {
			return true
		}
	}
	for _, name := range nftChainOrder {
		if !st.chains[name] || !slices.Equal(dumpedTags(rules[name]), tagsOf(base[name])) {
			return true
		}
	}
	return false
}

func (f *nftFirewall) pushEnsureAllUndo(undo *netutil.Undo, existed bool, created map[string]bool, added []nftElem) {
	if !existed {
		undo.Push("remove "+f.tableName()+" when empty", func() error {
			return f.removeWhere(func(string, string) bool { return false })
		})
	}
	for _, id := range slices.Sorted(maps.Keys(created)) {
		if !created[id] {
			continue
		}
		undo.Push("remove "+f.tableName()+" rules of network "+model.Short(id), func() error { return f.removeNetwork(id) })
	}
	if len(added) > 0 {
		undo.Push("remove "+f.tableName()+" elements the repair added", func() error { return f.deleteElems(added) })
	}
}

// deleteElems deletes the elements that are still as they were added.
func (f *nftFirewall) deleteElems(elems []nftElem) error {
	o := f.objs()
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := f.read(o, nftSetOrder)
	if err != nil || !st.exists {
		return err
	}
	var gone []nftElem
	for _, e := range elems {
		if have, ok := st.elem(e); ok && sameElem(have, e) {
			gone = append(gone, e)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	b := newNFTBatch(f.conn, o)
	b.elems(false, gone)
	return b.flush()
}
