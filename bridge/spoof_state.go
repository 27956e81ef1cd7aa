package bridge

// What the anti-spoofing filter knows of its table: each veth's set
// elements, read from the kernel or kept from the last write.

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/mynet/mynet/internal/model"
)

// spoofElems are one endpoint's set elements: the veth's name is in each.
type spoofElems struct {
	mac  string   // "" when none is known
	ipv4 []string // sorted
	ipv6 []string // sorted
}

func (e spoofElems) equal(o spoofElems) bool {
	return e.mac == o.mac && slices.Equal(e.ipv4, o.ipv4) && slices.Equal(e.ipv6, o.ipv6)
}

// spoofState is what the kernel has of the table.
type spoofState struct {
	exists   bool
	comments []string              // of the base chain's rules, in order
	veths    map[string]spoofElems // by veth, for every veth in the ports set
	// strays are elements of the other sets whose veth is not in ports
	// (left by someone else's edit); they are deleted with the veth.
	strays map[string]spoofElems
}

func newSpoofState() spoofState {
	return spoofState{veths: map[string]spoofElems{}, strays: map[string]spoofElems{}}
}

// spoofWant is what the sets must hold for ep.
func spoofWant(ep model.Endpoint) spoofElems {
	w := spoofElems{mac: net.HardwareAddr(ep.MAC).String()}
	for _, a := range ep.Addresses {
		if a = a.Unmap(); a.Is4() {
			w.ipv4 = append(w.ipv4, a.String())
		} else {
			w.ipv6 = append(w.ipv6, a.String())
		}
	}
	slices.Sort(w.ipv4)
	slices.Sort(w.ipv6)
	return w
}

// pick returns the veths selected picks, among those under the filter and
// the strays, sorted, and how many veths under the filter it leaves.
func (st spoofState) pick(selected func(veth string) bool) (gone []string, left int) {
	for veth := range st.veths {
		if selected(veth) {
			gone = append(gone, veth)
		} else {
			left++
		}
	}
	for veth := range st.strays {
		if selected(veth) && !slices.Contains(gone, veth) {
			gone = append(gone, veth)
		}
	}
	slices.Sort(gone)
	return gone, left
}

// cachedSpoofState is the table's state at an nftables generation.
type cachedSpoofState struct {
	gen uint32
	st  spoofState
}

// loadState returns the table's state, from the cache when nothing
// changed since this filter last wrote it, and the generation it is
// valid at (0: do not cache what is built on it).
func (f *nftFilter) loadState(c *nftables.Conn, o spoofObjects) (spoofState, uint32, error) {
	gen, err := f.generation()
	if err != nil {
		return spoofState{}, 0, err
	}
	if f.cache != nil && f.ledger.onlyOthers(f.cache.gen, gen, spoofWriter) {
		f.cache.gen = gen
		return f.cache.st, gen, nil
	}
	st, err := f.readTable(c, o)
	if err != nil {
		return st, 0, err
	}
	// The read is not atomic with the generation: re-read it, and keep no
	// cache if anything committed in between.
	if again, err := f.generation(); err != nil || again != gen {
		return st, 0, err
	}
	f.cache = &cachedSpoofState{gen: gen, st: st}
	return st, gen, nil
}

// storeState records the state a write of this filter produced on
// top of the one loaded at gen. The write committed one generation; if the
// generation moved by more, someone else committed too and the cache is
// dropped.
func (f *nftFilter) storeState(st spoofState, gen uint32) {
	now, err := f.generation()
	if err != nil || gen == 0 || now != gen+1 {
		f.forgetState()
		return
	}
	f.ledger.wrote(gen, now, spoofWriter)
	f.cache = &cachedSpoofState{gen: now, st: st}
}

// spoofWriter names the filter's writes in the ledger.
const spoofWriter = "anti-spoofing"

func (f *nftFilter) forgetState() { f.cache = nil }

// readTable reads the base chain's rule comments and every set
// element: a fixed number of requests however many endpoints there are.
func (f *nftFilter) readTable(c *nftables.Conn, o spoofObjects) (spoofState, error) {
	st := newSpoofState()
	f.reads++
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return st, fmt.Errorf("list nftables bridge tables: %w", err)
	}
	st.exists = slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == o.table.Name })
	if !st.exists {
		return st, nil
	}
	comments, err := f.ruleComments(o.table.Name)
	if err != nil {
		return st, err
	}
	st.comments = comments[spoofBaseChain]
	sets, err := c.GetSets(o.table)
	if err != nil {
		return st, fmt.Errorf("list sets of table bridge %s: %w", o.table.Name, err)
	}
	elems := map[string][]nftables.SetElement{}
	for _, name := range []string{setPorts, setMACs, setIPv4, setIPv6} {
		i := slices.IndexFunc(sets, func(s *nftables.Set) bool { return s.Name == name })
		if i < 0 || sets[i].IsMap || sets[i].KeyType.Bytes != o.sets[name].KeyType.Bytes {
			continue // missing, or another version's: the rules check forces a rewrite
		}
		if elems[name], err = c.GetSetElements(sets[i]); err != nil {
			return st, fmt.Errorf("list set %s of table bridge %s: %w", name, o.table.Name, err)
		}
	}
	for _, e := range elems[setPorts] {
		st.veths[ifname(e.Key)] = spoofElems{}
	}
	entry := func(veth string) (spoofElems, func(spoofElems)) {
		if e, ok := st.veths[veth]; ok {
			return e, func(e spoofElems) { st.veths[veth] = e }
		}
		return st.strays[veth], func(e spoofElems) { st.strays[veth] = e }
	}
	for _, e := range elems[setMACs] {
		if len(e.Key) < model.IFNAMSIZ+6 {
			continue
		}
		cur, put := entry(ifname(e.Key))
		cur.mac = net.HardwareAddr(e.Key[model.IFNAMSIZ : model.IFNAMSIZ+6]).String()
		put(cur)
	}
	for _, fam := range []struct {
		set string
		n   int
	}{{setIPv4, 4}, {setIPv6, 16}} {
		for _, e := range elems[fam.set] {
			if len(e.Key) < model.IFNAMSIZ+fam.n {
				continue
			}
			a, _ := netip.AddrFromSlice(e.Key[model.IFNAMSIZ : model.IFNAMSIZ+fam.n])
			cur, put := entry(ifname(e.Key))
			if fam.n == 4 {
				cur.ipv4 = append(cur.ipv4, a.String())
				slices.Sort(cur.ipv4)
			} else {
				cur.ipv6 = append(cur.ipv6, a.String())
				slices.Sort(cur.ipv6)
			}
			put(cur)
		}
	}
	return st, nil
}

// ifname is the interface name at the start of a set key.
func ifname(key []byte) string {
	n := min(len(key), model.IFNAMSIZ)
	if i := slices.Index(key[:n], 0); i >= 0 {
		n = i
	}
	return string(key[:n])
}
