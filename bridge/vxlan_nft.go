package bridge

// The VXLAN port's filter under the nftables backend (see vxlan_filter.go
// for why it exists), one table per family:
//
//	table ip mynet_vxlan {
//		set vteps { type ipv4_addr; }
//		chain input {
//			type filter hook input priority -1; policy accept;
//			meta l4proto udp udp dport PORT ip saddr @vteps accept comment "mynet vxlan port=PORT"
//			meta l4proto udp udp dport PORT counter drop
//		}
//	}
//
// A change rewrites the table whole (deleted and added in one batch, one
// atomic transaction): the set changes with the cluster's hosts, rarely.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

const (
	vtepSet       = "vteps"
	vtepChainName = "input"
	vtepComment   = "mynet vxlan port="
)

// vtepObjects are the table's objects for one family.
func (f *nftFirewall) vtepObjects() (*nftables.Table, *nftables.Set, *nftables.Chain) {
	fam, key := nftables.TableFamilyIPv4, nftables.TypeIPAddr
	if f.v6 {
		fam, key = nftables.TableFamilyIPv6, nftables.TypeIP6Addr
	}
	t := &nftables.Table{Family: fam, Name: model.VXLANTableName(f.instance)}
	policy := nftables.ChainPolicyAccept
	return t, &nftables.Set{Table: t, Name: vtepSet, KeyType: key},
		&nftables.Chain{Table: t, Name: vtepChainName, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput,
			Priority: nftables.ChainPriorityRef(-1), Policy: &policy}
}

// vtepRule is one of the chain's two rules: the accept of the set's
// sources, or the drop of the rest.
func (f *nftFirewall) vtepRule(t *nftables.Table, ch *nftables.Chain, set *nftables.Set, port int, accept bool) *nftables.Rule {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, uint16(port))},
	}
	if !accept {
		e = append(e, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
		return &nftables.Rule{Table: t, Chain: ch, Exprs: e}
	}
	offset, n := uint32(12), uint32(4)
	if f.v6 {
		offset, n = 8, 16
	}
	e = append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Verdict{Kind: expr.VerdictAccept})
	return &nftables.Rule{Table: t, Chain: ch, Exprs: e,
		UserData: userdata.AppendString(nil, userdata.TypeComment, vtepComment+strconv.Itoa(port))}
}

func (f *nftFirewall) syncVTEPs(ctx context.Context, port int, vteps []netip.Addr) (bool, error) {
	if f.conn == nil {
		return false, f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	want := slices.Clone(vteps)
	slices.SortFunc(want, netip.Addr.Compare)
	want = slices.Compact(want)
	havePort, have, exists, err := f.readVTEPsLocked()
	if err != nil {
		return false, err
	}
	if exists && havePort == port && slices.Equal(have, want) {
		return false, nil
	}
	if err := stopped(ctx, f.family()+" VXLAN port filter"); err != nil {
		return false, err
	}
	t, set, ch := f.vtepObjects()
	if exists {
		f.conn.DelTable(t)
	}
	f.conn.AddTable(t)
	elems := make([]nftables.SetElement, 0, len(want))
	for _, v := range want {
		elems = append(elems, nftables.SetElement{Key: v.AsSlice()})
	}
	if err := f.conn.AddSet(set, elems); err != nil {
		f.conn.DelTable(&nftables.Table{Family: t.Family, Name: t.Name + "-discard"}) // fail the batch
		_ = f.conn.Flush()
		return false, fmt.Errorf("%s VXLAN port filter: %w", f.family(), err)
	}
	f.conn.AddChain(ch)
	f.conn.AddRule(f.vtepRule(t, ch, set, port, true))
	f.conn.AddRule(f.vtepRule(t, ch, set, port, false))
	if err := f.conn.Flush(); err != nil {
		return false, fmt.Errorf("write the %s VXLAN port filter: %w", f.family(), err)
	}
	return true, nil
}

func (f *nftFirewall) removeVTEPs() error {
	if f.conn == nil {
		return f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, _, exists, err := f.readVTEPsLocked()
	if err != nil || !exists {
		return err
	}
	t, _, _ := f.vtepObjects()
	f.conn.DelTable(t)
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("remove the %s VXLAN port filter: %w", f.family(), err)
	}
	return nil
}

func (f *nftFirewall) readVTEPs() (int, []netip.Addr, error) {
	if f.conn == nil {
		return 0, nil, f.err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	port, vteps, _, err := f.readVTEPsLocked()
	return port, vteps, err
}

// readVTEPsLocked reads the table: the port of its accept rule (0 when
// the rules are not the two it writes), the set's addresses, sorted.
func (f *nftFirewall) readVTEPsLocked() (port int, vteps []netip.Addr, exists bool, err error) {
	t, set, ch := f.vtepObjects()
	tables, err := f.conn.ListTablesOfFamily(t.Family)
	if err != nil {
		return 0, nil, false, fmt.Errorf("%s VXLAN port filter: list tables: %w", f.family(), err)
	}
	if !slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }) {
		return 0, nil, false, nil
	}
	elems, err := f.conn.GetSetElements(set)
	if err != nil {
		// A table without the set is not the one this writes: rewrite it.
		return 0, nil, true, nil
	}
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			vteps = append(vteps, a)
		}
	}
	slices.SortFunc(vteps, netip.Addr.Compare)
	rules, err := f.conn.GetRules(t, ch)
	if err != nil || len(rules) != 2 {
		return 0, vteps, true, nil
	}
	if c, ok := userdata.GetString(rules[0].UserData, userdata.TypeComment); ok {
		if s, ok := strings.CutPrefix(c, vtepComment); ok {
			port, _ = strconv.Atoi(s)
		}
	}
	return port, vteps, true, nil
}
