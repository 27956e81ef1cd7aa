package bridge

// The nftables firewall backend's objects and rules, as data: the same
// builders queue them onto a netlink batch and render them as nft-like
// text for the golden files. The layout and its order against Docker's
// tables are described in nft_firewall.go.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

// Base chains and their priorities. Each is one off the standard
// priority Docker's chains use, so the order between the two tables is
// defined rather than left to registration order.
const (
	nftForward     = "forward"     // filter forward, priority filter - 1 (-1)
	nftPrerouting  = "prerouting"  // nat prerouting, priority dstnat - 1 (-101)
	nftOutput      = "output"      // nat output, priority dstnat - 1 (-101)
	nftPostrouting = "postrouting" // nat postrouting, priority srcnat - 1 (99)
	nftDirect      = "direct"      // filter prerouting, priority mangle (-150): after conntrack, before DNAT
	nftDNAT        = "publish"     // regular chain: published ports (not "dnat", a keyword of nft's)
)

var nftBasePriority = map[string]int32{
	nftForward: -1, nftPrerouting: -101, nftOutput: -101, nftPostrouting: 99, nftDirect: -150,
}

// Sets and maps of the table.
const (
	nsInJumps     = "in-jumps"      // ifname : jump net-<ID>-in
	nsOutJumps    = "out-jumps"     // ifname : jump net-<ID>-out
	nsNATOutJumps = "nat-out-jumps" // ifname : jump net-<ID>-nat-out
	nsNATInJumps  = "nat-in-jumps"  // ifname : jump net-<ID>-nat-in
	nsDirectJumps = "direct-jumps"  // ifname : jump net-<ID>-direct
	nsBridges     = "bridges"       // every mynet bridge of the family
	nsPortsAddr   = "ports-addr"    // proto . host addr . host port : container addr . port
	nsPortsAny    = "ports-any"     // proto . host port : container addr . port
	nsPublished   = "published"     // container addr . proto . port of every published port
	nsRouted      = "routed"        // container addr . proto . port opened in gateway mode routed
	// Docker 29's bridges as its nftables tables name them (a chain
	// filter-forward-in__<bridge> each), copied from its table.
	nsDockerBridges = "docker-bridges"
)

var nftSetOrder = []string{nsBridges, nsDockerBridges, nsPortsAddr, nsPortsAny, nsPublished, nsRouted, nsInJumps, nsOutJumps, nsNATOutJumps, nsNATInJumps, nsDirectJumps}

// Registers. Single values go in the 128-bit register 1; concatenations
// are built from the 32-bit register NFT_REG32_00 on, one register per
// field of up to 4 bytes.
const (
	nrReg1   = 1
	nrReg32  = 8 // NFT_REG32_00
	nrVerdic = 0
)

// ctrPort looks the destination address, protocol and port up in a set
// of container ports (published, routed).
func (r *nftRule) ctrPort(o nftObjs, set string) *nftRule {
	r.add("", o.daddrTo(nrReg32), nrMeta(expr.MetaKeyL4PROTO, nrReg32+o.addrLen()/4),
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: nrReg32 + o.addrLen()/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	return r.lookup(o, o.ipName()+" daddr . meta l4proto . th dport @"+set, set, false)
}

// nftObjs are one family's table objects; names are what identify them
// in the kernel, and a batch that adds the sets fills in their IDs.
type nftObjs struct {
	v6    bool
	table *nftables.Table
	base  map[string]*nftables.Chain
	sets  map[string]*nftables.Set
}

func nftObjsFor(instance string, v6 bool) nftObjs {
	fam := nftables.TableFamilyIPv4
	addr := nftables.TypeIPAddr
	if v6 {
		fam, addr = nftables.TableFamilyIPv6, nftables.TypeIP6Addr
	}
	t := &nftables.Table{Family: fam, Name: model.NFTTableName(instance)}
	o := nftObjs{v6: v6, table: t, base: map[string]*nftables.Chain{}, sets: map[string]*nftables.Set{}}
	policy := nftables.ChainPolicyAccept
	for name, prio := range nftBasePriority {
		typ, hook := nftables.ChainTypeFilter, nftables.ChainHookForward
		switch name {
		case nftPrerouting:
			typ, hook = nftables.ChainTypeNAT, nftables.ChainHookPrerouting
		case nftOutput:
			typ, hook = nftables.ChainTypeNAT, nftables.ChainHookOutput
		case nftPostrouting:
			typ, hook = nftables.ChainTypeNAT, nftables.ChainHookPostrouting
		case nftDirect:
			hook = nftables.ChainHookPrerouting
		}
		o.base[name] = &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio)), Policy: &policy}
	}
	o.base[nftDNAT] = &nftables.Chain{Name: nftDNAT, Table: t}
	vmap := func(name string) *nftables.Set {
		return &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian, IsMap: true, DataType: nftables.TypeVerdict}
	}
	for _, n := range []string{nsInJumps, nsOutJumps, nsNATOutJumps, nsNATInJumps, nsDirectJumps} {
		o.sets[n] = vmap(n)
	}
	for _, n := range []string{nsBridges, nsDockerBridges} {
		o.sets[n] = &nftables.Set{Table: t, Name: n, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	}
	target := nftables.MustConcatSetType(addr, nftables.TypeInetService)
	o.sets[nsPortsAddr] = &nftables.Set{Table: t, Name: nsPortsAddr, IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeInetProto, addr, nftables.TypeInetService), DataType: target}
	for _, n := range []string{nsPublished, nsRouted} {
		o.sets[n] = &nftables.Set{Table: t, Name: n, Concatenation: true,
			KeyType: nftables.MustConcatSetType(addr, nftables.TypeInetProto, nftables.TypeInetService)}
	}
	o.sets[nsPortsAny] = &nftables.Set{Table: t, Name: nsPortsAny, IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), DataType: target}
	return o
}

func (o nftObjs) ipName() string {
	if o.v6 {
		return "ip6"
	}
	return "ip"
}

func (o nftObjs) addrLen() uint32 {
	if o.v6 {
		return 16
	}
	return 4
}

// nftRule is a rule's expressions and its text as nft would list it.
type nftRule struct {
	exprs []expr.Any
	text  []string
}

func (r *nftRule) add(text string, e ...expr.Any) *nftRule {
	r.exprs = append(r.exprs, e...)
	if text != "" {
		r.text = append(r.text, text)
	}
	return r
}

func (r *nftRule) String() string { return strings.Join(r.text, " ") }

func rule1() *nftRule { return &nftRule{} }

func nrCmp(op expr.CmpOp, data []byte) expr.Any {
	return &expr.Cmp{Op: op, Register: nrReg1, Data: data}
}

// ifname matches the input or output interface; a name ending in "*"
// matches the prefix (nft's wildcard: the comparison covers the prefix's
// bytes only).
func (r *nftRule) ifname(out, neg bool, name string) *nftRule {
	key, word := expr.MetaKeyIIFNAME, "iifname"
	if out {
		key, word = expr.MetaKeyOIFNAME, "oifname"
	}
	data := spoofIfnameKey(name)
	if p, ok := strings.CutSuffix(name, "*"); ok {
		data = []byte(p)
	}
	op, opText := expr.CmpOpEq, ""
	if neg {
		op, opText = expr.CmpOpNeq, "!= "
	}
	return r.add(fmt.Sprintf("%s %s%q", word, opText, name), &expr.Meta{Key: key, Register: nrReg1}, nrCmp(op, data))
}

// ctState matches replies (established, related) or, with neg, the rest.
func (r *nftRule) ctState(neg bool) *nftRule {
	op, t := expr.CmpOpNeq, "ct state established,related"
	if neg {
		op, t = expr.CmpOpEq, "ct state != established,related"
	}
	return r.ctBits(t, expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, op)
}

func (r *nftRule) ctBits(text string, key expr.CtKey, mask uint32, op expr.CmpOp) *nftRule {
	return r.add(text,
		&expr.Ct{Register: nrReg1, Key: key},
		&expr.Bitwise{SourceRegister: nrReg1, DestRegister: nrReg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		nrCmp(op, make([]byte, 4)))
}

// addr matches the source or destination address against a prefix.
func (r *nftRule) addr(o nftObjs, dst bool, p netip.Prefix) *nftRule {
	off, word := uint32(12), "saddr"
	if o.v6 {
		off = 8
	}
	if dst {
		off, word = off+o.addrLen(), "daddr"
	}
	e := []expr.Any{&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: nrReg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: o.addrLen()}}
	text := fmt.Sprintf("%s %s %s", o.ipName(), word, p)
	if p.Bits() == p.Addr().BitLen() {
		text = fmt.Sprintf("%s %s %s", o.ipName(), word, p.Addr())
	} else {
		m := prefixMask(p.Bits(), int(o.addrLen()))
		e = append(e, &expr.Bitwise{SourceRegister: nrReg1, DestRegister: nrReg1, Len: o.addrLen(), Mask: m, Xor: make([]byte, o.addrLen())})
	}
	return r.add(text, append(e, nrCmp(expr.CmpOpEq, p.Masked().Addr().AsSlice()))...)
}

func prefixMask(bits, n int) []byte {
	m := make([]byte, n)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

func (r *nftRule) verdict(kind expr.VerdictKind, chain string) *nftRule {
	text := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return", expr.VerdictJump: "jump " + chain}[kind]
	if kind == expr.VerdictDrop {
		r.add("counter", &expr.Counter{})
	}
	return r.add(text, &expr.Verdict{Kind: kind, Chain: chain})
}

// lookupSet queries a set (or, with data, a map, whose data lands in
// register 1) with the key built from register NFT_REG32_00 on.
func (r *nftRule) lookup(o nftObjs, text, set string, inv bool) *nftRule {
	s := o.sets[set]
	l := &expr.Lookup{SourceRegister: nrReg32, SetName: s.Name, SetID: s.ID, Invert: inv}
	if s.IsMap {
		l.DestRegister, l.IsDestRegSet = nrReg1, true
	}
	return r.add(text, l)
}

// vmap jumps by the interface name in register 1.
func (r *nftRule) vmap(o nftObjs, text, set string) *nftRule {
	s := o.sets[set]
	return r.add(text+" vmap @"+set, &expr.Lookup{SourceRegister: nrReg1, DestRegister: nrVerdic, IsDestRegSet: true, SetName: s.Name, SetID: s.ID})
}

func nrMeta(key expr.MetaKey, reg uint32) expr.Any { return &expr.Meta{Key: key, Register: reg} }

// portKeyExprs load proto . [daddr .] dport into the 32-bit registers
// from NFT_REG32_00 on, for a lookup in the port maps.
func portKeyExprs(o nftObjs, withAddr bool) []expr.Any {
	reg := uint32(nrReg32)
	out := []expr.Any{nrMeta(expr.MetaKeyL4PROTO, reg)}
	reg++
	if withAddr {
		out = append(out, o.daddrTo(reg))
		reg += o.addrLen() / 4
	}
	return append(out, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
}

func (o nftObjs) daddrTo(reg uint32) expr.Any {
	off := uint32(16)
	if o.v6 {
		off = 24
	}
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: o.addrLen()}
}

// baseRules are the fixed rules of the table's chains, by chain.
func (o nftObjs) baseRules() map[string][]*nftRule {
	ip := o.ipName()
	local := func(r *nftRule) *nftRule {
		return r.add("fib daddr type local",
			&expr.Fib{Register: nrReg1, FlagDADDR: true, ResultADDRTYPE: true},
			nrCmp(expr.CmpOpEq, binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)))
	}
	output := local(rule1())
	if o.v6 {
		// ::1 cannot be routed to a bridge, unlike 127.0.0.1 with route_localnet.
		output = rule1().add("ip6 daddr != ::1",
			&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: nrReg1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			nrCmp(expr.CmpOpNeq, netip.IPv6Loopback().AsSlice()))
		output = local(output)
	}
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: nrReg1, RegProtoMin: nrReg32 + 1, Specified: true}
	if o.v6 {
		nat.Family, nat.RegProtoMin = unix.NFPROTO_IPV6, nrReg32+4
	}
	dnat := func(set string, withAddr bool) *nftRule {
		key := "meta l4proto . th dport"
		if withAddr {
			key = "meta l4proto . " + ip + " daddr . th dport"
		}
		r := rule1().add("", portKeyExprs(o, withAddr)...)
		return r.lookup(o, "", set, false).add("dnat "+ip+" to "+key+" map @"+set, nat)
	}
	// Translated connections to a published container port only: a
	// published port does not open the container to direct connections.
	accept := rule1().ctBits("ct status dnat", expr.CtKeySTATUS, 0x20 /* IPS_DST_NAT */, expr.CmpOpNeq)
	accept.ctrPort(o, nsPublished).verdict(expr.VerdictAccept, "")
	fibOif := rule1().add("", &expr.Fib{Register: nrReg1, FlagDADDR: true, ResultOIFNAME: true})
	return map[string][]*nftRule{
		nftForward: {
			accept,
			rule1().add("", nrMeta(expr.MetaKeyOIFNAME, nrReg1)).vmap(o, "oifname", nsInJumps),
			rule1().add("", nrMeta(expr.MetaKeyIIFNAME, nrReg1)).vmap(o, "iifname", nsOutJumps),
		},
		nftPrerouting: {local(rule1()).verdict(expr.VerdictJump, nftDNAT)},
		nftOutput:     {output.verdict(expr.VerdictJump, nftDNAT)},
		nftDNAT:       {dnat(nsPortsAddr, true), dnat(nsPortsAny, false)},
		nftPostrouting: {
			rule1().add("", nrMeta(expr.MetaKeyIIFNAME, nrReg1)).vmap(o, "iifname", nsNATOutJumps),
			rule1().add("", nrMeta(expr.MetaKeyOIFNAME, nrReg1)).vmap(o, "oifname", nsNATInJumps),
		},
		nftDirect: {fibOif.vmap(o, "fib daddr oifname", nsDirectJumps)},
	}
}

// nftChainOrder is the order base objects are written in: the dnat chain
// before the chains that jump to it.
var nftChainOrder = []string{nftDNAT, nftForward, nftPrerouting, nftOutput, nftPostrouting, nftDirect}

// nftElem is one set or map element with its text.
type nftElem struct {
	set     string
	key     []byte
	val     []byte
	jump    string // vmap elements: the chain
	comment string
	text    string
}

func (e nftElem) element() nftables.SetElement {
	se := nftables.SetElement{Key: e.key, Val: e.val, Comment: e.comment}
	if e.jump != "" {
		se.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: e.jump}
	}
	return se
}

// nftNetChain is a per-network chain with its rules.
type nftNetChain struct {
	name  string
	rules []*nftRule
}

// nftPortBytes is a port as a concatenation field: big endian, padded to
// the 4-byte register.
func nftPortBytes(p uint16) []byte { return append(binary.BigEndian.AppendUint16(nil, p), 0, 0) }

// nftPublishedElem is the published set's element of a container port.
func nftPublishedElem(addr netip.Addr, proto byte, protoName string, port uint16, comment string) nftElem {
	key := append(append(addr.AsSlice(), proto, 0, 0, 0), nftPortBytes(port)...)
	return nftElem{set: nsPublished, key: key, comment: comment, text: fmt.Sprintf("%s . %s . %d", addr, protoName, port)}
}
