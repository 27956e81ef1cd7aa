package bridge

// Anti-spoofing: what a container may put on its bridge port.
//
// A container has CAP_NET_RAW by default, so it can write any frame to its
// eth0. On a shared bridge that lets it take over a neighbour's MAC (the
// bridge then forwards the neighbour's traffic to it), poison the ARP and
// neighbour caches of the host and of the other containers, send from
// addresses it was not given, become an IPv6 router, or smuggle frames past
// every rule inside a VLAN tag. The filter below, modelled on LXD's per-port
// bridge filter (security.mac_filtering/ipv4_filtering/ipv6_filtering),
// accepts from an endpoint's host veth only what that endpoint owns.
//
// Layout, one nftables table of family bridge per instance (named like the
// iptables chains: "mynet" for the default instance, "mynet_<6 hex>"
// otherwise), made through netlink with github.com/google/nftables, so no
// nft or ebtables binary is needed and it does not matter which backend the
// iptables binary uses:
//
//	table bridge mynet {
//		set ports { type ifname; }                    # host veths under the filter
//		set macs  { type ifname . ether_addr; }       # each veth's MAC
//		set ipv4  { type ifname . ipv4_addr; }        # each veth's addresses
//		set ipv6  { type ifname . ipv6_addr; }
//		chain prerouting {
//			type filter hook prerouting priority -300; policy accept;
//			iifname != @ports accept
//			iifname . ether saddr != @macs drop
//			ether type ip iifname . ip saddr @ipv4 accept
//			...one rule per kind of forgery, see spoofRules...
//		}
//	}
//
// Prerouting sees every frame entering the bridge from a port, whether the
// bridge forwards it to another port or delivers it to the host, and runs
// before the bridge learns the source MAC, so a dropped frame cannot move a
// neighbour's MAC to the attacker's port either. Priority -300 puts it
// before br_netfilter (0) and bridge conntrack (-200).
//
// The rules are the same for every endpoint and never change; an endpoint
// is only set elements keyed by its veth's name. So the ruleset does not
// grow with endpoints (21 rules for any number), a frame costs the same few
// hash lookups whatever the number of endpoints, and adding or removing an
// endpoint adds or deletes a handful of elements in one atomic batch. An
// earlier layout, a verdict map jumping to a chain per endpoint, made the
// kernel re-validate every chain the map could reach on each commit that
// added a jump (nft_table_validate): 6 ms more per container start at 1000
// endpoints on the benchmark VM. Plain set elements need no validation.
//
// Sockets: the Dataplane opens its two netfilter netlink sockets when it is
// created, in the caller's network namespace (the host's in production, the
// test's inside nstest.Run), and keeps them. Closing a netfilter netlink
// socket makes the kernel wait for the deferred cleanup of the last
// ruleset change (nft_rcv_nl_event flushes the destroy work, which waits
// for an RCU grace period): a socket per call cost 10-20 ms per container
// start and stop on the benchmark VM.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"github.com/mynet/mynet/internal/model"
	"golang.org/x/sys/unix"
)

const (
	spoofBaseChain = "prerouting"
	// spoofPriority runs the filter before br_netfilter and bridge
	// conntrack, as the "dstnat" priority of the bridge family.
	spoofPriority = -300
	// spoofVersion changes whenever spoofRules changes, so that an ensure
	// after an upgrade rewrites the rules.
	spoofVersion = "2"
)

// The sets, and the byte length of their keys: concatenated fields are
// padded to 4 bytes, so a MAC takes 8.
const (
	setPorts = "ports"
	setMACs  = "macs"
	setIPv4  = "ipv4"
	setIPv6  = "ipv6"
)

// nftSockets are a Dataplane's netfilter sockets and what it knows of its
// table. mu serialises read-modify-write of the table.
type nftSockets struct {
	mu   sync.Mutex
	conn *nftables.Conn // batches and the library's reads
	raw  *netlink.Conn  // generation queries and the rule dump
	err  error          // why the sockets could not be opened
	// cache is the table as this Dataplane last wrote or read it, so that
	// a container start or stop costs one write and no read of a table
	// that grows with the endpoints (14 ms to read at 100 endpoints on the
	// benchmark VM). It is valid while the namespace's nftables generation
	// is cache.gen: every committed nftables change anywhere in the
	// namespace increments the generation, a write of mynet's by exactly
	// one, so a change made from outside, even to another table, makes the
	// next call read the table again.
	cache *cachedSpoofState
}

type cachedSpoofState struct {
	gen uint32
	st  spoofState
}

// openNFT opens the sockets in the calling thread's network namespace.
func openNFT() *nftSockets {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return &nftSockets{err: fmt.Errorf("open nftables netlink socket: %w", err)}
	}
	raw, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		c.CloseLasting()
		return &nftSockets{err: fmt.Errorf("open nftables netlink socket: %w", err)}
	}
	return &nftSockets{conn: c, raw: raw}
}

func (n *nftSockets) close() {
	if n.err == nil {
		n.conn.CloseLasting()
		n.raw.Close()
	}
}

// lockNFT takes nft.mu (the caller unlocks it) and returns the socket for
// batches, or why there is none.
func (d *Dataplane) lockNFT() (*nftables.Conn, error) {
	d.nft.mu.Lock()
	return d.nft.conn, d.nft.err
}

// SpoofTable names this instance's anti-spoofing table (family bridge),
// for operators and tests: nft list table bridge NAME.
func (d *Dataplane) SpoofTable() string { return model.SpoofTableName(d.instance) }

// spoofObjects are the table's objects as Go values; names are all that
// identify them in the kernel.
type spoofObjects struct {
	table *nftables.Table
	base  *nftables.Chain
	sets  map[string]*nftables.Set
}

func (d *Dataplane) spoofObjects() spoofObjects {
	t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: d.SpoofTable()}
	policy := nftables.ChainPolicyAccept
	concat := func(name string, field nftables.SetDatatype) *nftables.Set {
		kt, err := nftables.ConcatSetType(nftables.TypeIFName, field)
		if err != nil {
			panic(err) // two fields are always allowed
		}
		return &nftables.Set{Table: t, Name: name, KeyType: kt, Concatenation: true}
	}
	return spoofObjects{
		table: t,
		base: &nftables.Chain{
			Name: spoofBaseChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(spoofPriority), Policy: &policy,
		},
		sets: map[string]*nftables.Set{
			// nft keeps strings in host byte order; without this, nft list
			// shows the names as "".
			setPorts: {Table: t, Name: setPorts, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian},
			setMACs:  concat(setMACs, nftables.TypeEtherAddr),
			setIPv4:  concat(setIPv4, nftables.TypeIPAddr),
			setIPv6:  concat(setIPv6, nftables.TypeIP6Addr),
		},
	}
}

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

// EnsureSpoofCheck puts the endpoint under the filter: frames from
// ep.HostVeth must carry ep.MAC and, in ARP, IPv4 and IPv6, only
// ep.Addresses (see spoofRules for the exact policy). It creates the table,
// its sets and its rules when missing or outdated, and changes nothing
// when the endpoint's elements are already those it would write. One
// atomic batch: on error nothing changed. RemoveSpoofCheck undoes it.
func (d *Dataplane) EnsureSpoofCheck(ep model.Endpoint) error {
	_, err := d.ensureSpoofCheck(ep)
	return err
}

// ensureSpoofCheck is EnsureSpoofCheck; it reports whether it put the veth
// under the filter, which it was not before (its undo is RemoveSpoofCheck).
func (d *Dataplane) ensureSpoofCheck(ep model.Endpoint) (added bool, err error) {
	if err := spoofCheckInputs(ep); err != nil {
		return false, err
	}
	want := spoofWant(ep)
	c, err := d.lockNFT()
	defer d.nft.mu.Unlock()
	if err != nil {
		return false, err
	}
	o := d.spoofObjects()
	_, comments := spoofRules(o)
	cur, gen, err := d.loadSpoofState(c, o)
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
		c.AddTable(o.table)
		c.AddChain(o.base)
		for _, name := range []string{setPorts, setMACs, setIPv4, setIPv6} {
			if err := c.AddSet(o.sets[name], nil); err != nil {
				return false, fmt.Errorf("anti-spoofing set %s: %w", name, err)
			}
		}
		rules, _ := spoofRules(o) // now with the new sets' IDs
		for i, r := range rules {
			c.AddRule(&nftables.Rule{Table: o.table, Chain: o.base, Exprs: r, UserData: spoofComment(comments[i])})
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
		d.forgetSpoofState()
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
	d.storeSpoofState(cur, gen)
	d.log.Debug("anti-spoofing elements written", "endpoint_id", model.Short(ep.ID), "veth", ep.HostVeth, "table", o.table.Name)
	return !filtered, nil
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

// RemoveSpoofCheck deletes the endpoint's elements. Missing ones are not an
// error. The table stays, even empty: creating it registers a netfilter
// hook and deleting it unregisters one, and each waits for an RCU grace
// period (13 ms on the benchmark VM), which every container start and stop
// paid while the network had one container. DeleteNetwork and the orphan
// sweep remove an empty table.
func (d *Dataplane) RemoveSpoofCheck(ep model.Endpoint) error {
	return d.removeSpoof(func(veth string) bool { return veth == ep.HostVeth }, false)
}

// removeSpoofOrphans deletes the elements of every veth whose endpoint is
// not in endpoints (full IDs, as RemoveOrphans takes them; veths are named
// after the 12-hex short form, which is what is compared), and with
// dropEmptyTable the table when no endpoint is left.
func (d *Dataplane) removeSpoofOrphans(endpoints map[string]bool, dropEmptyTable bool) error {
	keep := map[string]bool{}
	for id := range endpoints {
		host, _ := model.VethNames(id)
		keep[host] = true
	}
	return d.removeSpoof(func(veth string) bool { return !keep[veth] }, dropEmptyTable)
}

// removeEmptySpoofTable deletes the table if no endpoint is under it.
func (d *Dataplane) removeEmptySpoofTable() error {
	return d.removeSpoof(func(string) bool { return false }, true)
}

// removeSpoof deletes the elements of the veths selected picks, all in one
// batch. With dropEmptyTable, a table left without endpoints goes too.
func (d *Dataplane) removeSpoof(selected func(veth string) bool, dropEmptyTable bool) error {
	c, err := d.lockNFT()
	defer d.nft.mu.Unlock()
	if err != nil {
		return err
	}
	o := d.spoofObjects()
	cur, gen, err := d.loadSpoofState(c, o)
	if err != nil || !cur.exists {
		return err
	}
	var gone []string
	for veth := range cur.veths {
		if selected(veth) {
			gone = append(gone, veth)
		}
	}
	for veth := range cur.strays {
		if selected(veth) && !slices.Contains(gone, veth) {
			gone = append(gone, veth)
		}
	}
	slices.Sort(gone)
	left := 0
	for veth := range cur.veths {
		if !selected(veth) {
			left++
		}
	}
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
		d.forgetSpoofState()
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
	d.storeSpoofState(cur, gen)
	d.log.Debug("anti-spoofing elements removed", "table", o.table.Name, "veths", gone, "table_removed", dropTable)
	return nil
}

// loadSpoofState returns the table's state, from the cache when nothing
// changed since this Dataplane last wrote it, and the generation it is
// valid at (0: do not cache what is built on it).
func (d *Dataplane) loadSpoofState(c *nftables.Conn, o spoofObjects) (spoofState, uint32, error) {
	gen, err := d.nftGeneration()
	if err != nil {
		return spoofState{}, 0, err
	}
	if d.nft.cache != nil && d.nft.cache.gen == gen {
		return d.nft.cache.st, gen, nil
	}
	st, err := d.readSpoofTable(c, o)
	if err != nil {
		return st, 0, err
	}
	// The read is not atomic with the generation: re-read it, and keep no
	// cache if anything committed in between.
	if again, err := d.nftGeneration(); err != nil || again != gen {
		return st, 0, err
	}
	d.nft.cache = &cachedSpoofState{gen: gen, st: st}
	return st, gen, nil
}

// storeSpoofState records the state a write of this Dataplane produced on
// top of the one loaded at gen. The write committed one generation; if the
// generation moved by more, someone else committed too and the cache is
// dropped.
func (d *Dataplane) storeSpoofState(st spoofState, gen uint32) {
	now, err := d.nftGeneration()
	if err != nil || gen == 0 || now != gen+1 {
		d.forgetSpoofState()
		return
	}
	d.nft.cache = &cachedSpoofState{gen: now, st: st}
}

func (d *Dataplane) forgetSpoofState() { d.nft.cache = nil }

// SpoofFingerprint digests the anti-spoofing table as the kernel has it:
// the base chain's rules by comment under "spoof", and each veth's set
// elements under "veth:NAME", without handles or counters (see Digests).
// A digest changes when anyone adds, removes or flushes a rule or an
// element, so the periodic reconcile re-runs EnsureSpoofCheck where it
// did. It is computed from the cached state while the nftables generation
// says nothing changed since this Dataplane read or wrote the table.
func (d *Dataplane) SpoofFingerprint() (model.Digests, error) {
	c, err := d.lockNFT()
	defer d.nft.mu.Unlock()
	if err != nil {
		return nil, err
	}
	st, _, err := d.loadSpoofState(c, d.spoofObjects())
	if err != nil || !st.exists {
		return model.Digests{}, err
	}
	out := model.Digests{"spoof": "table bridge " + d.SpoofTable() + " rules: " + strings.Join(st.comments, " | ")}
	for veth, e := range st.veths {
		out["veth:"+veth] = fmt.Sprintf("port mac=%s ipv4=%v ipv6=%v", e.mac, e.ipv4, e.ipv6)
	}
	for veth, e := range st.strays {
		out["veth:"+veth] += fmt.Sprintf(" stray mac=%s ipv4=%v ipv6=%v", e.mac, e.ipv4, e.ipv6)
	}
	return out, nil
}

// readSpoofTable reads the base chain's rule comments and every set
// element: a fixed number of requests however many endpoints there are.
func (d *Dataplane) readSpoofTable(c *nftables.Conn, o spoofObjects) (spoofState, error) {
	st := newSpoofState()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return st, fmt.Errorf("list nftables bridge tables: %w", err)
	}
	st.exists = slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == o.table.Name })
	if !st.exists {
		return st, nil
	}
	comments, err := d.spoofRuleComments(o.table.Name)
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

func (d *Dataplane) nftGeneration() (uint32, error) {
	msgs, err := d.nft.raw.Execute(netlink.Message{Header: netlink.Header{
		Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
		Flags: netlink.Request,
	}, Data: nfgenmsg(unix.NFPROTO_UNSPEC)})
	if err != nil {
		return 0, fmt.Errorf("read nftables generation: %w", err)
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data[min(4, len(m.Data)):])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("read nftables generation: no NFTA_GEN_ID in the reply")
}

// nfgenmsg is the header of every nftables request: family, version,
// resource ID.
func nfgenmsg(family byte) []byte { return []byte{family, unix.NFNETLINK_V0, 0, 0} }

// spoofRuleComments returns the comments of every rule of the table by
// chain, in order, from a single netlink dump; only the comments are needed,
// not the expressions the library would decode.
func (d *Dataplane) spoofRuleComments(table string) (map[string][]string, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := d.nft.raw.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(nfgenmsg(unix.NFPROTO_BRIDGE), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("list rules of table bridge %s: %w", table, err)
	}
	out := map[string][]string{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var chain, comment string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out[chain] = append(out[chain], comment)
	}
	return out, nil
}

func spoofComment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

// spoofIfnameKey is an interface name as nftables compares it: IFNAMSIZ bytes,
// NUL-padded, what "meta iifname" loads.
func spoofIfnameKey(name string) []byte {
	k := make([]byte, model.IFNAMSIZ)
	copy(k, name)
	return k
}

// Ethernet types and protocol numbers the rules match.
var (
	spEtherARP      = spBE16(unix.ETH_P_ARP)
	spEtherIPv4     = spBE16(unix.ETH_P_IP)
	spEtherIPv6     = spBE16(unix.ETH_P_IPV6)
	spIPv4Any       = []byte{0, 0, 0, 0}
	spIPv4Broadcast = []byte{255, 255, 255, 255}
	spIPv6Any       = make([]byte, 16)
	// fe80::/10
	spLinkLocalMask   = append([]byte{0xff, 0xc0}, make([]byte, 14)...)
	spLinkLocalPrefix = append([]byte{0xfe, 0x80}, make([]byte, 14)...)
)

// ICMPv6 types (RFC 4861).
const (
	spIcmp6RouterAdvert   = 134
	spIcmp6NeighSolicit   = 135
	spIcmp6NeighAdvert    = 136
	spIcmp6Redirect       = 137
	spNdOptSourceLinkAddr = 1
	spNdOptTargetLinkAddr = 2
)

func spBE16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// Expression helpers; every rule works in register 1.
func spLoad(base expr.PayloadBase, offset, n uint32) expr.Any {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: base, Offset: offset, Len: n}
}
func spLL(offset, n uint32) expr.Any { return spLoad(expr.PayloadBaseLLHeader, offset, n) }
func spNH(offset, n uint32) expr.Any { return spLoad(expr.PayloadBaseNetworkHeader, offset, n) }
func spTH(offset, n uint32) expr.Any { return spLoad(expr.PayloadBaseTransportHeader, offset, n) }
func spEq(b []byte) expr.Any         { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
func spNeq(b []byte) expr.Any        { return &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: b} }

// spNeqAll matches a register that differs from every value: the rule form
// of "not in { ... }" without an anonymous set.
func spNeqAll(values [][]byte) []expr.Any {
	out := make([]expr.Any, 0, len(values))
	for _, v := range values {
		out = append(out, spNeq(v))
	}
	return out
}

func spEtherType(t []byte) []expr.Any { return []expr.Any{spLL(12, 2), spEq(t)} }

func spICMP6Type(typ byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, spEq([]byte{unix.IPPROTO_ICMPV6}),
		spTH(0, 1), spEq([]byte{typ}),
	}
}

// spNotLinkLocal matches when the 16 bytes in register 1 are outside fe80::/10.
func spNotLinkLocal() []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16, Mask: spLinkLocalMask, Xor: spIPv6Any},
		spNeq(spLinkLocalPrefix),
	}
}

func spDrop(matches ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, m := range matches {
		out = append(out, m...)
	}
	return append(out, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
}

// Registers: single fields are compared in the 128-bit register 1; a
// concatenation for a set lookup is built from the 32-bit register
// NFT_REG32_00 on, the 16-byte interface name first (four registers), the
// field right after it.
const (
	regConcat = 8  // NFT_REG32_00
	regField  = 12 // NFT_REG32_04
)

func spLoadTo(reg uint32, base expr.PayloadBase, offset, n uint32) expr.Any {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: base, Offset: offset, Len: n}
}

func spAccept(matches ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, m := range matches {
		out = append(out, m...)
	}
	return append(out, &expr.Verdict{Kind: expr.VerdictAccept})
}

// spoofCheckInputs refuses an endpoint the filter cannot describe.
func spoofCheckInputs(ep model.Endpoint) error {
	if err := model.ValidateIfName(ep.HostVeth); err != nil {
		return fmt.Errorf("anti-spoofing for endpoint %s: %w", model.Short(ep.ID), err)
	}
	if len(ep.ID) < 12 {
		return fmt.Errorf("anti-spoofing: endpoint ID %q is too short", ep.ID)
	}
	if len(ep.MAC) != 6 || ep.MAC[0]&1 != 0 {
		return fmt.Errorf("anti-spoofing for endpoint %s: MAC %q is not a unicast Ethernet address", model.Short(ep.ID), ep.MAC)
	}
	for _, a := range ep.Addresses {
		if a = a.Unmap(); !a.IsValid() || a.IsUnspecified() {
			return fmt.Errorf("anti-spoofing for endpoint %s: address %v is not a usable container address", model.Short(ep.ID), a)
		}
	}
	return nil
}

// spoofRules returns the base chain: rules that each accept a frame that
// is certainly fine or drop (and count) one kind of forgery, in order, and
// their comments. A frame no rule decides meets the chain's policy, which
// accepts it. Frames from ports not in @ports (other bridges' ports,
// endpoints of networks with anti-spoofing off) pass at the first rule.
// What passes from a port under the filter:
//
//   - Ethernet source the endpoint's MAC only, and only ARP, IPv4 and IPv6 frames (no
//     802.1Q/802.1ad tags, which would carry anything past these rules, no
//     LLC such as STP BPDUs);
//   - ARP for IPv4 over Ethernet whose sender MAC is the endpoint's and whose
//     sender address is one of the endpoint's IPv4 addresses or 0.0.0.0
//     (an RFC 5227 probe, which updates no cache);
//   - IPv4 from the endpoint's addresses; 0.0.0.0 only as a DHCP-style
//     broadcast (UDP to 255.255.255.255, port 67);
//   - IPv6 from the endpoint's addresses, from fe80::/10 (link-local
//     addresses are per link, and the container derives its own) and from
//     :: (duplicate address detection); no router advertisements or
//     redirects; neighbour advertisements only for the endpoint's
//     addresses or link-local ones, and neighbour solicitations and
//     advertisements whose first option, when it is a link-layer address,
//     is the endpoint's MAC.
//
// Residual risk, accepted as LXD does: an endpoint can forge another
// endpoint's link-local source address. Nothing in mynet addresses
// containers or the gateway by link-local address.
func spoofRules(o spoofObjects) (rules [][]expr.Any, comments []string) {
	add := func(what string, r []expr.Any) {
		rules = append(rules, r)
		comments = append(comments, what)
	}
	// has matches when (iifname . field) is in set, or with invert is not.
	has := func(set string, field expr.Any, invert bool) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regConcat}, field,
			&expr.Lookup{SourceRegister: regConcat, SetName: set, SetID: o.sets[set].ID, Invert: invert},
		}
	}
	add("mynet anti-spoofing v"+spoofVersion+": frames from ports not under the filter pass", spAccept([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: setPorts, SetID: o.sets[setPorts].ID, Invert: true},
	}))
	add("source MAC is not the endpoint's", spDrop(has(setMACs, spLoadTo(regField, expr.PayloadBaseLLHeader, 6, 6), true)))
	// The common case leaves early: nothing below drops IPv4 from the
	// endpoint's own address, or IPv6 other than ICMPv6 from it.
	add("IPv4 from the endpoint's address", spAccept(spEtherType(spEtherIPv4), has(setIPv4, spLoadTo(regField, expr.PayloadBaseNetworkHeader, 12, 4), false)))
	add("IPv6 other than ICMPv6 from the endpoint's address", spAccept(spEtherType(spEtherIPv6),
		[]expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, spNeq([]byte{unix.IPPROTO_ICMPV6})},
		has(setIPv6, spLoadTo(regField, expr.PayloadBaseNetworkHeader, 8, 16), false)))
	add("not ARP, IPv4 or IPv6 (VLAN tags, LLC)", spDrop([]expr.Any{spLL(12, 2)}, spNeqAll([][]byte{spEtherARP, spEtherIPv4, spEtherIPv6})))

	// One field per rule: nft would show a compare spanning several
	// fields as "f1 != a f2 != b", which reads as the opposite.
	add("ARP hardware type is not Ethernet", spDrop(spEtherType(spEtherARP), []expr.Any{spNH(0, 2), spNeq([]byte{0, 1})}))
	add("ARP protocol is not IPv4", spDrop(spEtherType(spEtherARP), []expr.Any{spNH(2, 2), spNeq(spEtherIPv4)}))
	add("ARP hardware address length is not 6", spDrop(spEtherType(spEtherARP), []expr.Any{spNH(4, 1), spNeq([]byte{6})}))
	add("ARP protocol address length is not 4", spDrop(spEtherType(spEtherARP), []expr.Any{spNH(5, 1), spNeq([]byte{4})}))
	add("ARP sender MAC is not the endpoint's", spDrop(spEtherType(spEtherARP), has(setMACs, spLoadTo(regField, expr.PayloadBaseNetworkHeader, 8, 6), true)))
	add("ARP sender address is not the endpoint's", spDrop(spEtherType(spEtherARP), []expr.Any{spNH(14, 4), spNeq(spIPv4Any)},
		has(setIPv4, spLoadTo(regField, expr.PayloadBaseNetworkHeader, 14, 4), true)))

	// The endpoint's own addresses were accepted above.
	add("IPv4 source is not the endpoint's", spDrop(spEtherType(spEtherIPv4), []expr.Any{spNH(12, 4), spNeq(spIPv4Any)}))
	unspec4 := append(spEtherType(spEtherIPv4), spNH(12, 4), spEq(spIPv4Any))
	add("IPv4 from 0.0.0.0 not to 255.255.255.255", spDrop(unspec4, []expr.Any{spNH(16, 4), spNeq(spIPv4Broadcast)}))
	add("IPv4 from 0.0.0.0 not UDP", spDrop(unspec4, []expr.Any{spNH(9, 1), spNeq([]byte{unix.IPPROTO_UDP})}))
	add("IPv4 from 0.0.0.0 not to port 67", spDrop(unspec4, []expr.Any{spTH(2, 2), spNeq(spBE16(67))}))

	add("IPv6 source is not the endpoint's, link-local or ::", spDrop(spEtherType(spEtherIPv6), []expr.Any{spNH(8, 16), spNeq(spIPv6Any)}, spNotLinkLocal(),
		has(setIPv6, spLoadTo(regField, expr.PayloadBaseNetworkHeader, 8, 16), true)))
	add("IPv6 router advertisement", spDrop(spEtherType(spEtherIPv6), spICMP6Type(spIcmp6RouterAdvert)))
	add("IPv6 redirect", spDrop(spEtherType(spEtherIPv6), spICMP6Type(spIcmp6Redirect)))
	add("IPv6 neighbour advertisement for an address not the endpoint's", spDrop(spEtherType(spEtherIPv6), spICMP6Type(spIcmp6NeighAdvert), []expr.Any{spTH(8, 16)}, spNotLinkLocal(),
		has(setIPv6, spLoadTo(regField, expr.PayloadBaseTransportHeader, 8, 16), true)))
	for _, nd := range []struct {
		typ, opt byte
		what     string
	}{
		{spIcmp6NeighAdvert, spNdOptTargetLinkAddr, "IPv6 neighbour advertisement with another MAC"},
		{spIcmp6NeighSolicit, spNdOptSourceLinkAddr, "IPv6 neighbour solicitation with another MAC"},
	} {
		// The first option follows the 24-byte message; its MAC is
		// checked only when it is a link-layer address option.
		add(nd.what, spDrop(spEtherType(spEtherIPv6), spICMP6Type(nd.typ), []expr.Any{spTH(24, 2), spEq([]byte{nd.opt, 1})},
			has(setMACs, spLoadTo(regField, expr.PayloadBaseTransportHeader, 26, 6), true)))
	}
	return rules, comments
}
