package bridge

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mynet/mynet/internal/model"
	"golang.org/x/sys/unix"
)

// nftFilter is the anti-spoofing filter in an nftables table of family
// bridge (the layout is in spoof.go), with the netfilter sockets it keeps
// open and what it knows of its table. mu serialises read-modify-write of
// the table: every method takes and releases it.
type nftFilter struct {
	table string
	log   *slog.Logger

	mu   sync.Mutex
	conn *nftables.Conn // batches and the library's reads
	raw  *netlink.Conn  // generation queries and the rule dump
	err  error          // why the sockets could not be opened
	// cache is the table as this filter last wrote or read it, so that
	// a container start or stop costs one write and no read of a table
	// that grows with the endpoints (14 ms to read at 100 endpoints on the
	// benchmark VM). It is valid while the namespace's nftables generation
	// is cache.gen: every committed nftables change anywhere in the
	// namespace increments the generation, a write of mynet's by exactly
	// one, so a change made from outside, even to another table, makes the
	// next call read the table again.
	cache *cachedSpoofState
	// ledger tells the commits of mynet's other writers apart (the
	// firewall's), after which the cache still holds; nil: none is.
	ledger *rulesetGen
	// digests are fingerprint's answer for the cache it was computed
	// from (digestsOf): the same until the cache is replaced.
	digests   model.Digests
	digestsOf *cachedSpoofState
	reads     int // of the table, for tests and benchmarks
}

// newNFTFilter opens the sockets in the calling thread's network
// namespace. A filter whose sockets could not be opened returns why from
// every call that needs them.
func newNFTFilter(table string, ledger *rulesetGen, log *slog.Logger) *nftFilter {
	f := &nftFilter{table: table, log: log, ledger: ledger}
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		f.err = fmt.Errorf("open nftables netlink socket: %w", err)
		return f
	}
	raw, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		c.CloseLasting()
		f.err = fmt.Errorf("open nftables netlink socket: %w", err)
		return f
	}
	f.conn, f.raw = c, raw
	return f
}

func (f *nftFilter) close() {
	if f.err == nil {
		f.conn.CloseLasting()
		f.raw.Close()
	}
}

// objects are the table's objects, made afresh for each call:
// a batch that adds the sets fills in their IDs.
func (f *nftFilter) objects() spoofObjects { return spoofObjectsFor(f.table) }

// ensure writes ep's elements, and the table, sets and rules when they
// are missing or another version's, in one batch; it writes nothing when
// the kernel already has exactly them.
func (f *nftFilter) ensure(ep model.Endpoint) (added bool, err error) {
	want := spoofWant(ep)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, f.err
	}
	c, o := f.conn, f.objects()
	_, comments := spoofRules(o)
	cur, gen, err := f.loadState(c, o)
	if err != nil {
		return false, err
	}
	rulesOK := cur.exists && slices.Equal(cur.comments, comments)
	if cur.exists && !rulesOK {
		// Another version's layout (or rules someone edited): start the
		// table over in this batch; the reconcile's full pass after an
		// upgrade puts the other endpoints back.
		c.DelTable(o.table)
		cur = newSpoofState()
	}
	have, filtered := cur.veths[ep.HostVeth]
	_, stray := cur.strays[ep.HostVeth]
	if rulesOK && filtered && !stray && have.equal(want) {
		return false, nil
	}
	if !rulesOK {
		if err := queueSpoofTable(c, o, comments); err != nil {
			return false, err
		}
	}
	// Stale elements of the veth (another address, a reused name) go in
	// the same batch as the new ones, so the veth is never unfiltered.
	if err := spoofDeleteElems(c, o, ep.HostVeth, have, cur.strays[ep.HostVeth], want); err != nil {
		return false, err
	}
	if err := spoofAddElems(c, o, ep.HostVeth, want, have); err != nil {
		return false, err
	}
	if err := c.Flush(); err != nil {
		f.forgetState()
		hint := ""
		if !cur.exists && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT)) {
			hint = " (anti-spoofing needs nf_tables with the bridge family, CONFIG_NF_TABLES_BRIDGE; it can be turned off per network)"
		}
		return false, fmt.Errorf("anti-spoofing rules for endpoint %s (veth %s) in nftables table bridge %s: %w%s", model.Short(ep.ID), ep.HostVeth, o.table.Name, err, hint)
	}
	// cur may be the cached state itself: update it in place.
	cur.exists, cur.comments = true, comments
	cur.veths[ep.HostVeth] = want
	delete(cur.strays, ep.HostVeth)
	f.storeState(cur, gen)
	f.log.Debug("anti-spoofing elements written", "endpoint_id", model.Short(ep.ID), "veth", ep.HostVeth, "table", o.table.Name)
	return !filtered, nil
}

// queueSpoofTable queues the table, its base chain, its sets and its
// rules, with comments, into c's batch.
func queueSpoofTable(c *nftables.Conn, o spoofObjects, comments []string) error {
	c.AddTable(o.table)
	c.AddChain(o.base)
	for _, name := range []string{setPorts, setMACs, setIPv4, setIPv6} {
		if err := c.AddSet(o.sets[name], nil); err != nil {
			return fmt.Errorf("anti-spoofing set %s: %w", name, err)
		}
	}
	rules, _ := spoofRules(o) // now with the new sets' IDs
	for i, r := range rules {
		c.AddRule(&nftables.Rule{Table: o.table, Chain: o.base, Exprs: r, UserData: spoofComment(comments[i])})
	}
	return nil
}

// remove deletes the elements of the veths selected picks, all in one
// batch. With dropEmptyTable, a table left without endpoints goes too.
func (f *nftFilter) remove(selected func(veth string) bool, dropEmptyTable bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	c, o := f.conn, f.objects()
	cur, gen, err := f.loadState(c, o)
	if err != nil || !cur.exists {
		return err
	}
	gone, left := cur.pick(selected)
	dropTable := dropEmptyTable && left == 0
	switch {
	case dropTable:
		// Deleting a table deletes everything in it.
		c.DelTable(o.table)
	case len(gone) == 0:
		return nil
	default:
		ports := map[string][][]byte{}
		for _, veth := range gone {
			if _, ok := cur.veths[veth]; ok {
				ports[setPorts] = append(ports[setPorts], spoofIfnameKey(veth))
			}
			if err := spoofDeleteElems(c, o, veth, cur.veths[veth], cur.strays[veth], spoofElems{}); err != nil {
				return err
			}
		}
		if err := spoofSetOp(c.SetDeleteElements, o, ports); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		f.forgetState()
		return fmt.Errorf("remove anti-spoofing elements of %v from nftables table bridge %s: %w", gone, o.table.Name, err)
	}
	if dropTable {
		cur = newSpoofState()
	} else { // cur may be the cached state itself: update it in place
		for _, veth := range gone {
			delete(cur.veths, veth)
			delete(cur.strays, veth)
		}
	}
	f.storeState(cur, gen)
	f.log.Debug("anti-spoofing elements removed", "table", o.table.Name, "veths", gone, "table_removed", dropTable)
	return nil
}

// fingerprint digests the table's rules by comment and each veth's
// elements, from the cached state while the generation says nothing
// changed (see Dataplane.SpoofFingerprint).
func (f *nftFilter) fingerprint() (model.Digests, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	st, _, err := f.loadState(f.conn, f.objects())
	if err != nil || !st.exists {
		return model.Digests{}, err
	}
	if f.cache != nil && f.digestsOf == f.cache {
		return maps.Clone(f.digests), nil
	}
	out := model.Digests{"spoof": "table bridge " + f.table + " rules: " + strings.Join(st.comments, " | ")}
	for veth, e := range st.veths {
		out["veth:"+veth] = fmt.Sprintf("port mac=%s ipv4=%v ipv6=%v", e.mac, e.ipv4, e.ipv6)
	}
	for veth, e := range st.strays {
		out["veth:"+veth] += fmt.Sprintf(" stray mac=%s ipv4=%v ipv6=%v", e.mac, e.ipv4, e.ipv6)
	}
	// The cache is replaced, never changed, when the table changes.
	f.digests, f.digestsOf = out, f.cache
	return maps.Clone(out), nil
}

// hasElements reports whether any veth is under the filter; without
// nftables there can be none.
func (f *nftFilter) hasElements() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, nil
	}
	st, _, err := f.loadState(f.conn, f.objects())
	if err != nil {
		return false, err
	}
	return st.exists && len(st.veths) > 0, nil
}

// spoofAddElems adds the elements of want that have lacks.
func spoofAddElems(c *nftables.Conn, o spoofObjects, veth string, want, have spoofElems) error {
	missing := spoofKeys(veth, want, have)
	missing[setPorts] = [][]byte{spoofIfnameKey(veth)} // adding an existing element is a no-op
	return spoofSetOp(c.SetAddElements, o, missing)
}

// spoofDeleteElems deletes the veth's elements in have and strays that are
// not in keep (the ports element is the caller's).
func spoofDeleteElems(c *nftables.Conn, o spoofObjects, veth string, have, strays, keep spoofElems) error {
	return errors.Join(
		spoofSetOp(c.SetDeleteElements, o, spoofKeys(veth, have, keep)),
		spoofSetOp(c.SetDeleteElements, o, spoofKeys(veth, strays, keep)))
}

// spoofSetOp queues op (the connection's SetAddElements or
// SetDeleteElements) for the keys of each set.
func spoofSetOp(op func(*nftables.Set, []nftables.SetElement) error, o spoofObjects, keys map[string][][]byte) error {
	var errs []error
	for set, ks := range keys {
		if len(ks) == 0 {
			continue
		}
		elems := make([]nftables.SetElement, len(ks))
		for i, k := range ks {
			elems[i] = nftables.SetElement{Key: k}
		}
		if err := op(o.sets[set], elems); err != nil {
			errs = append(errs, fmt.Errorf("anti-spoofing set %s: %w", set, err))
		}
	}
	return errors.Join(errs...)
}

// spoofKeys returns the set keys of e's elements for veth that are not in
// minus, by set.
func spoofKeys(veth string, e, minus spoofElems) map[string][][]byte {
	out := map[string][][]byte{}
	name := spoofIfnameKey(veth)
	if e.mac != "" && e.mac != minus.mac {
		if mac, err := net.ParseMAC(e.mac); err == nil {
			out[setMACs] = append(out[setMACs], append(append(slices.Clone(name), mac...), 0, 0))
		}
	}
	for _, fam := range []struct {
		set         string
		have, minus []string
	}{{setIPv4, e.ipv4, minus.ipv4}, {setIPv6, e.ipv6, minus.ipv6}} {
		for _, a := range fam.have {
			if slices.Contains(fam.minus, a) {
				continue
			}
			if addr, err := netip.ParseAddr(a); err == nil {
				out[fam.set] = append(out[fam.set], append(slices.Clone(name), addr.AsSlice()...))
			}
		}
	}
	return out
}
