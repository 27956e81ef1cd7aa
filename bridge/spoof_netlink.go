package bridge

// The two requests the nftables library has no call for, sent on the
// filter's raw netfilter socket.

import (
	"fmt"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// generation reads the namespace's nftables generation, which every
// committed change increments (see nftFilter.cache).
func (f *nftFilter) generation() (uint32, error) { return readGenID(f.raw) }

// nfgenmsg is the header of every nftables request: family, version,
// resource ID.
func nfgenmsg(family byte) []byte { return []byte{family, unix.NFNETLINK_V0, 0, 0} }

// ruleComments returns the comments of every rule of the table by
// chain, in order, from a single netlink dump; only the comments are needed,
// not the expressions the library would decode.
func (f *nftFilter) ruleComments(table string) (map[string][]string, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := f.raw.Execute(netlink.Message{
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
