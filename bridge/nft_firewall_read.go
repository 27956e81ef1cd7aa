package bridge

// The nftables firewall's reads of its table that do not go through the
// library: one netlink dump of all the table's rules, one of each set's
// elements, the ruleset's generation; and what the fingerprint and the
// startup claim read of the table.

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/mynet/mynet/internal/model"
)

// nftDumpedRule is one rule of a dump: its tag and a digest of its
// expressions without the counters' values.
type nftDumpedRule struct {
	tag, exprs string
}

// dumpRules lists every rule of the table in one netlink dump, by chain,
// in the chains' order; with exprs, the expressions' digests too (for the
// fingerprint; the comparison needs the tags only).
func (f *nftFirewall) dumpRules(o nftObjs, exprs bool) (map[string][]nftDumpedRule, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(o.table.Name + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := f.raw.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(o.table.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	out := map[string][]nftDumpedRule{}
	if errors.Is(err, unix.ENOENT) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dump rules of %s: %w", o.ipName()+" "+o.table.Name, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var chain string
		var r nftDumpedRule
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				r.tag, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
			case unix.NFTA_RULE_EXPRESSIONS:
				if !exprs {
					continue
				}
				r.exprs = nftExprsDigest(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out[chain] = append(out[chain], r)
	}
	return out, nil
}

// nftExprsDigest hashes a rule's expression list, leaving out the data
// of its counters, which traffic changes.
func nftExprsDigest(b []byte) string {
	h := sha256.New()
	list, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		h.Write(b)
	}
	for _, elem := range list {
		attrs, err := netlink.UnmarshalAttributes(elem.Data)
		if err != nil {
			h.Write(elem.Data)
			continue
		}
		counter := false
		for _, a := range attrs {
			if a.Type == unix.NFTA_EXPR_NAME && string(a.Data) == "counter\x00" {
				counter = true
			}
		}
		for _, a := range attrs {
			if counter && a.Type == unix.NFTA_EXPR_DATA {
				continue
			}
			fmt.Fprintf(h, "%d:%x;", a.Type, a.Data)
		}
		h.Write([]byte{'|'})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// genID is the generation of the network namespace's nftables ruleset,
// which every committed transaction (of any table, any program) changes.
func (f *nftFirewall) genID() (uint32, error) { return readGenID(f.raw) }

// nftJump is the chain a verdict map's element jumps to. The library
// lists the verdict as it came, NFTA_DATA_VERDICT's attributes in Val
// (NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN).
func nftJump(e nftables.SetElement) string {
	if e.VerdictData != nil {
		return e.VerdictData.Chain
	}
	inner, err := netlink.UnmarshalAttributes(e.Val)
	if err != nil {
		return ""
	}
	var code uint32
	chain := ""
	for _, a := range inner {
		switch a.Type {
		case unix.NFTA_VERDICT_CODE:
			if len(a.Data) == 4 {
				code = binary.BigEndian.Uint32(a.Data)
			}
		case unix.NFTA_VERDICT_CHAIN:
			chain = strings.TrimRight(string(a.Data), "\x00")
		}
	}
	if int32(code) != int32(expr.VerdictJump) {
		return ""
	}
	return chain
}

// dumpElems lists a set's elements in one netlink dump, decoding only what
// the comparison and the fingerprint use: key, data (a verdict's
// attributes for a verdict map, as the library gives them) and comment.
// The library's GetSetElements costs several times as much at thousands
// of elements.
func (f *nftFirewall) dumpElems(o nftObjs, set string) ([]nftables.SetElement, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(o.table.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := f.raw.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(o.table.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("dump elements of set %s: %w", set, err)
	}
	var out []nftables.SetElement
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		top, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			return nil, err
		}
		for _, a := range top {
			if a.Type != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			list, err := netlink.UnmarshalAttributes(a.Data)
			if err != nil {
				return nil, err
			}
			for _, item := range list {
				e, err := decodeElem(item.Data)
				if err != nil {
					return nil, err
				}
				out = append(out, e)
			}
		}
	}
	return out, nil
}

func decodeElem(b []byte) (nftables.SetElement, error) {
	var e nftables.SetElement
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return e, err
	}
	inner := func(data []byte) []byte {
		nested, err := netlink.UnmarshalAttributes(data)
		if err != nil || len(nested) == 0 {
			return nil
		}
		return nested[0].Data // NFTA_DATA_VALUE's bytes, or NFTA_DATA_VERDICT's attributes
	}
	for _, a := range attrs {
		switch a.Type {
		case unix.NFTA_SET_ELEM_KEY:
			e.Key = inner(a.Data)
		case unix.NFTA_SET_ELEM_DATA:
			e.Val = inner(a.Data)
		case unix.NFTA_SET_ELEM_USERDATA:
			e.Comment, _ = userdata.GetString(a.Data, userdata.NFTNL_UDATA_SET_ELEM_COMMENT)
		}
	}
	return e, nil
}

// hasRules reports whether the table has anything naming a network.
func (f *nftFirewall) hasRules() (bool, error) {
	o := f.objs()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, nil
	}
	st, err := f.read(o, nftSetOrder)
	if err != nil || !st.exists {
		return false, err
	}
	for name := range st.chains {
		if _, ok := model.ParseNFTNetworkChain(name); ok {
			return true, nil
		}
	}
	for _, es := range st.elems {
		for _, e := range es {
			if _, _, ok := model.ParseRuleComment(`comment "` + e.Comment + `"`); ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// ownLines are the table's chains with their rules and its elements, one
// line each, sorted within a chain's or set's lines only where the kernel
// gives no order (elements); lines of a network's chain or element carry
// its comment, for the fingerprint's keys.
func (f *nftFirewall) ownLines() ([]string, error) {
	o := f.objs()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, nil
	}
	// The periodic check fingerprints every few seconds; while nothing
	// was committed to the ruleset, the last lines are still the table's.
	gen, genErr := f.genID()
	if genErr == nil && f.lines.ok && f.lines.gen == gen {
		return f.lines.lines, nil
	}
	f.lines = nftLines{}
	f.reads++
	st, err := f.read(o, nftSetOrder)
	if err != nil {
		return nil, err
	}
	if !st.exists {
		// No table (no network of this family): that too holds until
		// the generation moves.
		f.lines = nftLines{gen: gen, ok: genErr == nil}
		return nil, nil
	}
	rules, err := f.dumpRules(o, true)
	if err != nil {
		return nil, err
	}
	var out []string
	names := make([]string, 0, len(st.chains))
	for name := range st.chains {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		suffix := ""
		if nid, ok := model.ParseNFTNetworkChain(name); ok {
			suffix = ` comment "` + model.RuleComment(nid, "") + `"`
		}
		out = append(out, "chain "+name+suffix)
		for _, r := range rules[name] {
			out = append(out, "rule "+name+" "+r.exprs+" "+r.tag+suffix)
		}
	}
	for _, set := range nftSetOrder {
		var lines []string
		for _, e := range st.elems[set] {
			v := fmt.Sprintf("%x", e.Val)
			if e.VerdictData != nil {
				v = "jump " + e.VerdictData.Chain
			}
			lines = append(lines, fmt.Sprintf("element %s %x : %s comment %q", set, e.Key, v, e.Comment))
		}
		slices.Sort(lines)
		out = append(out, lines...)
	}
	// Docker 29's bridges, which the networks in gateway mode
	// nat-unprotected follow (the docker-bridges set): the fingerprint
	// keys them apart (model.DigestDocker), as the iptables backend's
	// DOCKER-ISOLATION-STAGE-1 lines.
	for _, br := range st.docker {
		out = append(out, nftDockerBridgeLine+br)
	}
	if genErr == nil {
		f.lines = nftLines{gen: gen, lines: out, ok: true}
	}
	return out, nil
}

// nftLines are the fingerprint's lines of the table as read at a ruleset
// generation.
type nftLines struct {
	gen   uint32
	lines []string
	ok    bool
}

// nftDockerBridgeLine starts a fingerprint line naming a bridge of Docker
// 29's table.
const nftDockerBridgeLine = "docker-bridge "
