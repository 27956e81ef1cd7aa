package bridge

// The nftables firewall's reads of its table and its batches.

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// nftState is what a read found of the table.
type nftState struct {
	exists bool
	chains map[string]bool
	elems  map[string][]nftables.SetElement
	index  map[string]map[string]int // set -> key -> index in elems
	// docker are Docker 29's bridges of the family, from the chains of
	// its docker-bridges table, sorted.
	docker []string
}

func (st nftState) elem(e nftElem) (nftables.SetElement, bool) {
	i, ok := st.index[e.set][string(e.key)]
	if !ok {
		return nftables.SetElement{}, false
	}
	return st.elems[e.set][i], true
}

// read finds the table, its chains and the elements of the sets named.
func (f *nftFirewall) read(o nftObjs, sets []string) (nftState, error) {
	st := nftState{chains: map[string]bool{}, elems: map[string][]nftables.SetElement{}, index: map[string]map[string]int{}}
	tables, err := f.conn.ListTablesOfFamily(o.table.Family)
	if err != nil {
		return st, fmt.Errorf("list tables: %w", err)
	}
	st.exists = slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == o.table.Name })
	if !st.exists && !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == dockerNFTTable }) {
		return st, nil
	}
	chains, err := f.conn.ListChainsOfTableFamily(o.table.Family)
	if err != nil {
		return st, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == dockerNFTTable {
			if br, ok := strings.CutPrefix(c.Name, dockerBridgePrefix); ok {
				st.docker = append(st.docker, br)
			}
		}
		if c.Table.Name == o.table.Name {
			st.chains[c.Name] = true
		}
	}
	slices.Sort(st.docker)
	for _, name := range sets {
		if !st.exists {
			break
		}
		es, err := f.dumpElems(o, name)
		if err != nil {
			// A table of an older layout may lack a set; the next
			// ensureNetwork adds it.
			continue
		}
		st.elems[name] = es
		st.index[name] = make(map[string]int, len(es))
		for i, e := range es {
			st.index[name][string(e.Key)] = i
		}
	}
	return st, nil
}

// nftElemsPerMessage keeps a message's element list (about 200 bytes an
// element with its comment) under the 64 KiB of a netlink attribute.
const nftElemsPerMessage = 256

// nftBatch queues objects onto a connection's batch and records each as
// a line of nft-like text; with no connection it only records (golden
// files).
type nftBatch struct {
	c     *nftables.Conn
	o     nftObjs
	lines []string
	errs  []error
}

func newNFTBatch(c *nftables.Conn, o nftObjs) *nftBatch { return &nftBatch{c: c, o: o} }

func (b *nftBatch) prefix() string { return b.o.ipName() + " " + b.o.table.Name }

// base writes the table, its sets and its fixed chains whole: a chain
// that exists is flushed and filled again in the same batch.
func (b *nftBatch) base() {
	b.lines = append(b.lines, "add table "+b.prefix())
	if b.c != nil {
		b.c.AddTable(b.o.table)
	}
	for _, name := range nftSetOrder {
		s := b.o.sets[name]
		kind, typ := "set", s.KeyType.Name
		if s.IsMap {
			kind, typ = "map", typ+" : "+s.DataType.Name
		}
		b.lines = append(b.lines, fmt.Sprintf("add %s %s %s { type %s; }", kind, b.prefix(), name, typ))
		if b.c != nil {
			if err := b.c.AddSet(s, nil); err != nil {
				b.errs = append(b.errs, fmt.Errorf("set %s: %w", name, err))
			}
		}
	}
	rules := b.o.baseRules() // with the sets' IDs
	for _, name := range nftChainOrder {
		b.chain(b.o.base[name], rules[name])
	}
}

// chain adds the chain, flushes it and adds its rules.
func (b *nftBatch) chain(ch *nftables.Chain, rules []*nftRule) {
	decl := ""
	if ch.Hooknum != nil {
		typ := map[nftables.ChainType]string{nftables.ChainTypeFilter: "filter", nftables.ChainTypeNAT: "nat"}[ch.Type]
		hook := map[nftables.ChainHook]string{*nftables.ChainHookForward: "forward", *nftables.ChainHookPrerouting: "prerouting",
			*nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting"}[*ch.Hooknum]
		decl = fmt.Sprintf(" { type %s hook %s priority %d; policy accept; }", typ, hook, *ch.Priority)
	}
	b.lines = append(b.lines, "add chain "+b.prefix()+" "+ch.Name+decl, "flush chain "+b.prefix()+" "+ch.Name)
	if b.c != nil {
		b.c.AddChain(ch)
		b.c.FlushChain(ch)
	}
	for _, r := range rules {
		b.lines = append(b.lines, "add rule "+b.prefix()+" "+ch.Name+" "+r.String())
		if b.c != nil {
			b.c.AddRule(&nftables.Rule{Table: b.o.table, Chain: ch, Exprs: r.exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.tag())})
		}
	}
}

// elems adds or deletes elements, by set.
func (b *nftBatch) elems(add bool, elems []nftElem) {
	verb, op := "add", (*nftables.Conn).SetAddElements
	if !add {
		verb, op = "delete", (*nftables.Conn).SetDeleteElements
	}
	bySet := map[string][]nftables.SetElement{}
	for _, e := range elems {
		c := ""
		if e.comment != "" && add {
			c = fmt.Sprintf(" comment %q", e.comment)
		}
		b.lines = append(b.lines, fmt.Sprintf("%s element %s %s { %s%s }", verb, b.prefix(), e.set, e.text, c))
		bySet[e.set] = append(bySet[e.set], e.element())
	}
	if b.c == nil {
		return
	}
	for _, set := range nftSetOrder {
		if len(bySet[set]) == 0 {
			continue
		}
		// A message's element list is one netlink attribute, whose length
		// is 16 bits: a few hundred elements per message, all of them in
		// the same batch.
		for chunk := range slices.Chunk(bySet[set], nftElemsPerMessage) {
			if err := op(b.c, b.o.sets[set], chunk); err != nil {
				b.errs = append(b.errs, fmt.Errorf("%s elements of %s: %w", verb, set, err))
			}
		}
	}
}

func (b *nftBatch) delChain(name string) {
	b.lines = append(b.lines, "delete chain "+b.prefix()+" "+name)
	if b.c != nil {
		ch := &nftables.Chain{Name: name, Table: b.o.table}
		b.c.FlushChain(ch)
		b.c.DelChain(ch)
	}
}

func (b *nftBatch) delTable() {
	b.lines = append(b.lines, "delete table "+b.prefix())
	if b.c != nil {
		b.c.DelTable(b.o.table)
	}
}

// flush sends the batch: one transaction, all of it or nothing.
func (b *nftBatch) flush() error {
	if err := errors.Join(b.errs...); err != nil {
		// The library has no way to drop a connection's queued messages
		// but sending them: end the batch with the deletion of a table
		// that cannot exist, so the kernel rejects the whole transaction.
		if b.c != nil {
			b.c.DelTable(&nftables.Table{Family: b.o.table.Family, Name: b.o.table.Name + "-discard"})
			_ = b.c.Flush()
		}
		return err
	}
	if b.c == nil {
		return nil
	}
	return b.c.Flush()
}

// nftPublishedTarget is a published-set key as the port maps' value and
// protocol give it: container addr . port, then the protocol byte.
func nftPublishedTarget(key []byte) string {
	n := len(key) - 8
	return string(key[:n]) + string(key[n+4:]) + string(key[n:n+1])
}
