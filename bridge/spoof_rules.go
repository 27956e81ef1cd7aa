package bridge

// The anti-spoofing table's objects and the rules of its base chain, as
// github.com/google/nftables expressions (see spoof.go for the layout).

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
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

// spoofObjects are the table's objects as Go values; names are all that
// identify them in the kernel.
type spoofObjects struct {
	table *nftables.Table
	base  *nftables.Chain
	sets  map[string]*nftables.Set
}

// spoofObjectsFor returns the objects of the table named table.
func spoofObjectsFor(table string) spoofObjects {
	t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: table}
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
